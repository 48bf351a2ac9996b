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
        #[arg(value_name = "KERNEL")]
        kernel_image: PathBuf,
        /// Initramfs image.
        #[arg(value_name = "INITRD")]
        initrd_image: PathBuf,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Serve what a config file says; flags override its keys.
    ///
    /// Example: bootserver serve --config /etc/bootserver.toml
    Serve {
        /// TOML config file (keys: interface, address, netmask, range, boot_dir, state_dir,
        /// http_port, proxy_dhcp, kernel, initrd, cmdline, transport, broker, agent_plain_tcp,
        /// hello_binding, and the [dhcp], [tftp], [nfs], [desktops], [limits] and [auth] tables; see
        /// the README).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// List every PC that has announced itself to the broker, from the registry of a running
    /// `bootserver serve` (through its admin API).
    ///
    /// Example: bootserver clients
    Clients {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: AdminArgs,
    },
    /// Tell one PC to reboot, power off, or show a message on its screen.
    ///
    /// Example: bootserver client 52:54:00:12:34:56 message "Maintenance at 18:00"
    Client {
        /// The PC's MAC address, as `bootserver clients` lists it.
        mac: String,
        #[command(subcommand)]
        action: ClientAction,
        #[command(flatten)]
        api: AdminArgs,
    },
    /// Approve (or deny) the PC whose screen shows CODE, under `[pcs] enrolment = "approve"`.
    ///
    /// Example: bootserver enrol K7Q-2MX
    Enrol {
        /// The code on the PC's approval screen.
        code: String,
        /// Deny the PC instead.
        #[arg(long)]
        deny: bool,
        #[command(flatten)]
        api: AdminArgs,
    },
    /// Show what the memory algorithm does as users arrive (the paper's Table 3 by default).
    Plan(bootserver::broker::explain::PlanArgs),
    /// The deployment's certificate authority: boot images trust what it signs.
    ///
    /// Example: bootserver ca init --state-dir /var/lib/bootserver
    Ca {
        #[command(subcommand)]
        command: bootserver::ca::cli::CaCommand,
    },
    /// The people who log in: local accounts with argon2id passwords, in the state dir.
    ///
    /// Example: bootserver user add alice --template office
    User {
        #[command(subcommand)]
        command: bootserver::accounts::cli::UserCommand,
    },
    /// Virtualization hosts' certificates.
    ///
    /// Example: bootserver host enrol h1 --ip 10.0.0.11
    Host {
        #[command(subcommand)]
        command: bootserver::ca::cli::HostCommand,
    },
}

/// Where the admin API is and the token it wants.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API address.
    #[arg(long, global = true, env = bootserver::admin::ADMIN_ENV, default_value = bootserver::admin::DEFAULT_ADMIN)]
    admin: std::net::SocketAddr,
    /// The admin token file. Default: admin.token in the state dir.
    #[arg(long, global = true, env = "BOOTSERVER_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    at: bootserver::ca::cli::Where,
}

impl AdminArgs {
    fn endpoint(self) -> anyhow::Result<bootserver::admin::Endpoint> {
        let (state, _) = self.at.resolve()?;
        let path = bootserver::admin::token_path(self.token_file, &state);
        Ok(bootserver::admin::Endpoint { addr: self.admin, token: bootserver::admin::read_token(&path)? })
    }
}

/// What `bootserver client MAC` asks the PC to do.
#[derive(Subcommand)]
enum ClientAction {
    /// Restart the PC (it boots from the network again and announces itself).
    Reboot,
    /// Switch the PC off.
    Poweroff,
    /// Show TEXT on the PC's screen.
    Message {
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Show where the PC's current boot got: DHCP, boot files, hello, login, desktop.
    Stages {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enrol the PC (`[pcs] enrolment = "approve"`): it moves on from its approval screen at
    /// once. A MAC never seen may be approved beforehand.
    Approve,
    /// Refuse the PC: it is told so, and refused whenever it comes back.
    Deny,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let settings = match cli.command {
        Command::Boot { kernel_image: kernel, initrd_image: initrd, mut args } => {
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
                bootserver::statefile::private_dir(&state)?;
                std::fs::create_dir_all(&www)
                    .with_context(|| format!("creating {}", www.display()))?;
                args.boot_dir = Some(www);
            }
            Settings::resolve(FileConfig::default(), &args)?
        }
        Command::Plan(args) => return bootserver::broker::explain::run(&args),
        Command::Ca { command } => return bootserver::ca::cli::ca(command),
        Command::Host { command } => return bootserver::ca::cli::host(command),
        Command::User { command } => return bootserver::accounts::cli::run(command),
        Command::Clients { json, api } => return bootserver::admin::print_clients(&api.endpoint()?, json),
        Command::Enrol { code, deny, api } => {
            use bootserver::broker::enrolment as e;
            let body = serde_json::to_string(&e::ByCode { code, approve: !deny, by: Some(e::cli_user()) })?;
            return e::send_decision(&api.endpoint()?, "/api/enrolment", body);
        }
        Command::Client { mac, action: action @ (ClientAction::Approve | ClientAction::Deny), api } => {
            use bootserver::broker::enrolment as e;
            let mac = mac.parse::<proto::agent::MacAddr>().map_err(|e| anyhow::anyhow!(e))?;
            let verb = if matches!(action, ClientAction::Approve) { "approve" } else { "deny" };
            let body = serde_json::json!({ "by": e::cli_user() }).to_string();
            return e::send_decision(&api.endpoint()?, &format!("/api/clients/{mac}/{verb}"), body);
        }
        Command::Client { mac, action, api } => {
            use bootserver::admin::Action;
            let action = match action {
                ClientAction::Reboot => Action::Reboot,
                ClientAction::Poweroff => Action::Poweroff,
                ClientAction::Message { text } => Action::Message { text: text.join(" ") },
                ClientAction::Stages { json } => return bootserver::stages::api::print_stages(&api.endpoint()?, &mac, json),
                ClientAction::Approve | ClientAction::Deny => anyhow::bail!("approve and deny go to the enrolment routes"),
            };
            return bootserver::admin::send_action(&api.endpoint()?, &mac, &action);
        }
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
