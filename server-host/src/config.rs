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
    /// Address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token every request must carry.
    pub token: String,
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
    /// When set (e.g. "127.0.0.1"), VNC listens on this host-local address (ports from 5900 up)
    /// instead of a unix socket per VM.
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

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if cfg.token.len() < 8 {
            anyhow::bail!("{}: token must be at least 8 characters", path.display());
        }
        Ok(cfg)
    }
}
