//! `bootserver ca ...` and `bootserver host enrol`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{Ca, ServerNames};
use crate::config::FileConfig;

const DEFAULT_STATE_DIR: &str = "/var/lib/bootserver";

/// Where the CA lives: --state-dir, else the config file's `state_dir`, else the default.
#[derive(Debug, Args)]
pub struct Where {
    /// The boot server's state dir; the CA is in its `ca/` folder. Default: the config's
    /// `state_dir`, else /var/lib/bootserver.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The config file `bootserver serve` runs with, for `state_dir` (and `address`, `broker`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl Where {
    pub fn resolve(&self) -> anyhow::Result<(PathBuf, FileConfig)> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let state = self.state_dir.clone().or(file.state_dir.clone()).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        Ok((state, file))
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the deployment's certificate authority in the state dir (key mode 0600, folders
    /// 0700) and print the path of its certificate, which boot images carry.
    ///
    /// Example: bootserver ca init --state-dir /var/lib/bootserver
    Init {
        #[command(flatten)]
        at: Where,
        /// Replace an existing CA. Every image made for the old one stops trusting this
        /// server until it is rebuilt with the new certificate.
        #[arg(long)]
        force: bool,
    },
    /// Issue the certificate of the broker and the VNC proxy (`bootserver serve` does it by
    /// itself when it has none, or none for its addresses).
    ///
    /// Example: bootserver ca issue-server --address 10.0.0.1 --name boot.lab.example
    IssueServer {
        #[command(flatten)]
        at: Where,
        /// An address the PCs reach this server at; repeatable. Default: the config's
        /// `address` and the address of `broker`.
        #[arg(long)]
        address: Vec<IpAddr>,
        /// A DNS name of this server; repeatable. Default: this machine's host name.
        #[arg(long)]
        name: Vec<String>,
    },
    /// Issue the broker's client certificate, which the hosts' APIs and their VMs' VNC take
    /// (`bootserver serve` does it by itself when it has none); prints its path, with the key
    /// beside it (client.key).
    ///
    /// Example: curl --cacert ca/ca.pem --cert ca/client.pem --key ca/client.key https://10.0.0.11:8470/v1/host
    IssueClient {
        #[command(flatten)]
        at: Where,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Issue a virtualization host its certificate and key, with the CA's certificate, into a
    /// folder of the state dir (printed); copy that folder to the host.
    ///
    /// Example: bootserver host enrol h1 --ip 10.0.0.11
    Enrol {
        /// The host's name, as in `[[desktops.hosts]]`; also a DNS name in its certificate.
        name: String,
        /// An address the broker reaches the host at; repeatable.
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[command(flatten)]
        at: Where,
        /// Issue a new certificate to a host that has one.
        #[arg(long)]
        force: bool,
    },
}

pub fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { at, force } => {
            let (state, _) = at.resolve()?;
            let files = super::init(&state, force)?;
            println!("{}", files.ca_cert().display());
            eprintln!(
                "put it into the boot images: initramfs build --ca-cert {} (or `ca_cert` in the image config)",
                files.ca_cert().display()
            );
            Ok(())
        }
        CaCommand::IssueServer { at, address, name } => {
            let (state, file) = at.resolve()?;
            let mut ips = address;
            if ips.is_empty() {
                ips.extend(file.address.map(IpAddr::from));
                ips.extend(file.broker.map(|b| b.ip()));
            }
            let mut names = ServerNames::of_this_machine(&ips);
            if !name.is_empty() {
                names.dns = name;
            }
            if names.ips.is_empty() {
                anyhow::bail!("no address to issue the certificate for: give --address (or a config with `address`)");
            }
            let (cert, _) = open(&state)?.issue_server(&names)?;
            println!("{}", cert.display());
            Ok(())
        }
        CaCommand::IssueClient { at } => {
            let (state, _) = at.resolve()?;
            let (cert, _) = open(&state)?.issue_client()?;
            println!("{}", cert.display());
            Ok(())
        }
    }
}

pub fn host(cmd: HostCommand) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Enrol { name, ip, at, force } => {
            let (state, _) = at.resolve()?;
            let dir = open(&state)?.enrol_host(&name, &ip, force)?;
            println!("{}", dir.display());
            eprintln!("host.pem, host.key (mode 0600) and ca.pem are for host {name} only: copy the folder there over a trusted channel");
            Ok(())
        }
    }
}

fn open(state: &Path) -> anyhow::Result<Ca> {
    Ca::open(state).with_context(|| format!("the CA of {}", state.display()))
}
