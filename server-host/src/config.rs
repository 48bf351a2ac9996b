//! The TOML config of `server-host serve`; every key also has a command-line flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How to pick the accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Probe KVM with a short timed boot, fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTPS API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The folder `bootserver host enrol` made for this host: `host.pem` and `host.key`, which
    /// the API (and VNC on TCP) serve with, and `ca.pem`, the CA whose client certificates
    /// (the broker's) alone are let in. Required (here or `--tls-dir`).
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// SQLite database, VM folders, users' disks and backups live here.
    pub state_dir: PathBuf,
    /// One folder per template: `disk.qcow2` (read-only), optionally `vmlinuz`, `initrd.img`
    /// and `template.toml` (`description`, `cmdline`).
    pub templates_dir: PathBuf,
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    #[serde(default = "default_qemu_img")]
    pub qemu_img: PathBuf,
    #[serde(default = "default_mkfs")]
    pub mkfs_ext4: PathBuf,
    #[serde(default = "default_accel")]
    pub accel: AccelChoice,
    /// How long the KVM probe boot may take before KVM is declared unusable.
    #[serde(default = "default_probe_secs")]
    pub kvm_probe_secs: u64,
    /// Size of a new user data disk.
    #[serde(default = "default_data_mib")]
    pub data_disk_mib: u64,
    /// Memory kept for the host itself; VMs may be promised the rest.
    #[serde(default = "default_reserve")]
    pub reserved_memory_mib: u64,
    /// When set, VNC listens on this address (ports from 5901 up) instead of a unix socket per
    /// VM: a loopback address (e.g. "127.0.0.1") for a broker on this machine, or this host's
    /// address for a broker on another one. On any address but loopback, VNC is served inside
    /// TLS only (VeNCrypt X509, QEMU's `tls-creds-x509` with `verify-peer=on`, the certificates
    /// of `tls_dir`): only the broker's client certificate opens it.
    #[serde(default)]
    pub vnc_tcp_host: Option<String>,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8470".parse().expect("constant address")
}
fn default_qemu() -> PathBuf {
    "qemu-system-x86_64".into()
}
fn default_qemu_img() -> PathBuf {
    "qemu-img".into()
}
fn default_mkfs() -> PathBuf {
    "mkfs.ext4".into()
}
fn default_accel() -> AccelChoice {
    AccelChoice::Auto
}
fn default_probe_secs() -> u64 {
    20
}
fn default_data_mib() -> u64 {
    64
}
fn default_reserve() -> u64 {
    512
}

/// The certificate files of `tls_dir`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(cfg)
    }

    /// Whether VNC is served on TCP inside TLS: on any `vnc_tcp_host` but a loopback one.
    pub fn vnc_tls(&self) -> bool {
        self.vnc_tcp_host.as_deref().is_some_and(|h| {
            let loopback = h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            !loopback
        })
    }

    /// QEMU's x509 credentials folder for VNC inside TLS.
    pub fn vnc_tls_dir(&self) -> PathBuf {
        self.state_dir.join("vnc-tls")
    }

    /// The files of `tls_dir`, which must all be there.
    pub fn tls(&self) -> anyhow::Result<TlsFiles> {
        let Some(dir) = &self.tls_dir else {
            anyhow::bail!(
                "no tls_dir: the API takes the broker by its certificate only; enrol this host on the boot server \
                 (bootserver host enrol NAME --ip ADDRESS), copy the folder it prints here and name it in tls_dir"
            );
        };
        let files = TlsFiles { cert: dir.join("host.pem"), key: dir.join("host.key"), ca: dir.join("ca.pem") };
        for f in [&files.cert, &files.key, &files.ca] {
            if !f.is_file() {
                anyhow::bail!("tls_dir {}: {} is missing (bootserver host enrol writes it)", dir.display(), f.display());
            }
        }
        Ok(files)
    }
}
