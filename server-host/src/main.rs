//! `server-host`: the host agent of a virtualization server.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use server_host::config::{AccelChoice, Config};

/// Host agent of a virtualization server: turns the broker's requests into desktop VMs.
///
/// Each VM is one QEMU process (controlled over QMP) booting a read-only template through a
/// qcow2 overlay, with the user's own data disk and a VNC screen on a unix socket (or a
/// host-local address) that only the broker reaches. State lives in SQLite in the state
/// folder; QEMU processes outlive this agent and are re-adopted when it starts again.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (see server-host/README.md). Flags override the config file.
    Serve {
        /// TOML config: tls_dir, state_dir, templates_dir, and optionally listen, qemu, qemu_img,
        /// mkfs_ext4, accel, kvm_probe_secs, data_disk_mib, reserved_memory_mib, vnc_tcp_host.
        #[arg(long)]
        config: PathBuf,
        /// Address of the API (default 127.0.0.1:8470).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The folder of `bootserver host enrol` (host.pem, host.key, ca.pem).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        templates_dir: Option<PathBuf>,
        /// auto probes KVM with a short timed boot and falls back to TCG.
        #[arg(long, value_enum)]
        accel: Option<AccelChoice>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().cmd {
        Cmd::Serve { config, listen, tls_dir, state_dir, templates_dir, accel } => {
            let mut cfg = Config::load(&config)?;
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if let Some(v) = tls_dir {
                cfg.tls_dir = Some(v);
            }
            if let Some(v) = state_dir {
                cfg.state_dir = v;
            }
            if let Some(v) = templates_dir {
                cfg.templates_dir = v;
            }
            if let Some(v) = accel {
                cfg.accel = v;
            }
            server_host::serve(cfg).await
        }
    }
}
