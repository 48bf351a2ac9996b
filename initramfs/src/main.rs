//! `initramfs`: build, inspect and reflash boot images.

use clap::Parser;

/// Build, inspect and reflash Linux initramfs images.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let _cli = Cli::parse();
    Ok(())
}
