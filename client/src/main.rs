//! `thinclient`: the firmware of a diskless PC.

mod agent;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod viewer;

/// Firmware of a diskless PC that shows its user's virtual desktop.
///
/// Runs as `/init` of the boot image built by `initramfs build`. It reads the `tc.*` keys that the
/// boot server's iPXE script put on the kernel command line.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the boot parameters (broker address, NFS root, log filter) read from a kernel
    /// command line, to check what the boot server handed this PC.
    ///
    /// Example: `thinclient params` or `thinclient params --cmdline-file saved-cmdline.txt`
    Params {
        /// File holding the kernel command line.
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline_file: PathBuf,
    },
    /// Run as the boot image's `/init` (PID 1): drivers, network, announce to the broker,
    /// viewer supervision. Configured by the kernel command line: tc.broker=IP:PORT (else DHCP
    /// option 224), tc.nfsroot=IP:/EXPORT, tc.log=FILTER, tc.iface=NAME,
    /// tc.dhcp_timeout=SECONDS, tc.error_delay=SECONDS (before restarting after an error).
    ///
    /// Example: `thinclient agent dhcp --interface eth0` tries its DHCP client alone.
    Agent(agent::AgentArgs),
    /// Show a VNC desktop on this PC's screen (SDL2 or /dev/fb0), with keyboard and mouse.
    ///
    /// Example: `thinclient view 10.0.0.1:5901 --password-file /run/vnc.pass`
    View(viewer::ViewArgs),
}

fn main() -> anyhow::Result<()> {
    // As the image's /init the kernel passes no subcommand, and possibly stray words of its
    // command line: PID 1 is always the agent.
    let cli = if std::process::id() == 1 { Cli::parse_from(["thinclient", "agent"]) } else { Cli::parse() };
    // The agent sets up logging itself, from the kernel command line.
    if !matches!(cli.command, Command::Agent(_)) {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp_millis().init();
    }
    match cli.command {
        Command::View(args) => return viewer::run(args),
        Command::Params { cmdline_file } => {
            let line = std::fs::read_to_string(&cmdline_file)
                .with_context(|| format!("reading {}", cmdline_file.display()))?;
            let params = proto::cmdline::BootParams::parse(&line)
                .with_context(|| format!("parsing {}", cmdline_file.display()))?;
            match params.broker {
                Some(b) => println!("broker: {b}"),
                None => println!("broker: (none)"),
            }
            println!("nfsroot: {}", params.nfsroot.as_deref().unwrap_or("(none)"));
            println!("log: {}", params.log.as_deref().unwrap_or("(default)"));
            for (k, v) in &params.unknown {
                println!("unknown key {k}={v}");
            }
        }
        Command::Agent(args) => agent::main(args)?,
    }
    Ok(())
}
