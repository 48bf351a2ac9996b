//! `server-host`: the host agent of a virtualization server.

use clap::Parser;

/// Host agent of a virtualization server: turns the broker's requests into desktop VMs.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let _cli = Cli::parse();
    Ok(())
}
