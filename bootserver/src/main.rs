//! `bootserver`: network-boot diskless PCs and broker their desktops.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bootserver::config::{FileConfig, ServeArgs, Settings};

/// Boot server for diskless thin clients.
///
/// Answers DHCP (or proxyDHCP) on one interface, serves iPXE, the kernel and the initramfs
/// over TFTP and HTTP, and hands iPXE a script that boots them with the broker's address on the
/// kernel command line.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot every PC on the LAN into KERNEL and INITRD, with nothing else to configure.
    ///
    /// Example: bootserver boot vmlinuz initrd.img --interface eth1 --cmdline "console=ttyS0"
    Boot {
        /// Kernel image (bzImage).
        kernel: PathBuf,
        /// Initramfs image.
        initrd: PathBuf,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Serve what a config file says; flags override its keys.
    ///
    /// Example: bootserver serve --config /etc/bootserver.toml
    Serve {
        /// TOML config file (keys: interface, address, netmask, range, boot_dir, state_dir,
        /// http_port, proxy_dhcp, kernel, initrd, cmdline, transport, broker, and the [dhcp]
        /// and [tftp] tables; see the README).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Show what the memory algorithm does as users arrive (the paper's Table 3 by default).
    Plan(bootserver::broker::explain::PlanArgs),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let settings = match cli.command {
        Command::Boot { kernel, initrd, mut args } => {
            for (what, p) in [("kernel", &kernel), ("initrd", &initrd)] {
                if !p.is_file() {
                    anyhow::bail!("{what} {} does not exist or is not a file", p.display());
                }
            }
            args.kernel = Some(kernel.canonicalize()?);
            args.initrd = Some(initrd.canonicalize()?);
            let state = args.state_dir.clone().unwrap_or_else(|| "/var/lib/bootserver".into());
            if args.boot_dir.is_none() {
                // Serve nothing but the named files and iPXE: never expose the current folder.
                let www = state.join("www");
                std::fs::create_dir_all(&www)
                    .with_context(|| format!("creating {}", www.display()))?;
                args.boot_dir = Some(www);
            }
            Settings::resolve(FileConfig::default(), &args)?
        }
        Command::Plan(args) => return bootserver::broker::explain::run(&args),
        Command::Serve { config, args } => {
            let file = match &config {
                Some(p) => FileConfig::load(p)?,
                None => FileConfig::default(),
            };
            Settings::resolve(file, &args)?
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bootserver::server::serve(settings))
}
