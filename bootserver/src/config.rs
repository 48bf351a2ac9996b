//! The boot server's configuration: a TOML file whose every key also has a flag.
//!
//! Precedence: built-in defaults, then the file (`--config`), then flags. The result is a
//! validated [`Settings`]; every error names the key and says how to fix it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::dhcp::DhcpConfig;
use crate::net::limits::{Limits, LimitsConfig};
use crate::nfs::{ExportConfig, NfsConfig};
use crate::tftp::TftpConfig;

/// How iPXE fetches the kernel and initramfs named in its boot script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http,
    Tftp,
}

/// The keys of the config file. Every key is optional here; defaults are applied in
/// [`Settings::resolve`] so that a flag can still override them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub interface: Option<String>,
    pub address: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub range: Option<String>,
    pub boot_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub http_port: Option<u16>,
    pub proxy_dhcp: Option<bool>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub transport: Option<Transport>,
    pub broker: Option<SocketAddr>,
    pub enable_dhcp: Option<bool>,
    pub enable_tftp: Option<bool>,
    pub enable_http: Option<bool>,
    pub enable_broker: Option<bool>,
    pub agent_plain_tcp: Option<bool>,
    pub hello_binding: Option<bool>,
    #[serde(default)]
    pub dhcp: DhcpConfig,
    #[serde(default)]
    pub tftp: TftpConfig,
    #[serde(default)]
    pub desktops: crate::broker::settings::BrokerConfig,
    #[serde(default)]
    pub nfs: NfsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[auth]`: who may log in (see `accounts::auth`).
    #[serde(default)]
    pub auth: crate::accounts::AuthConfig,
    /// `[pcs]`: login, kiosk or disabled, per MAC, glob or group (see `broker::pcs`).
    #[serde(default)]
    pub pcs: crate::broker::pcs::PcsConfig,
    /// `[metrics]`: the hosts' time series and the arrivals (see `broker::metrics`).
    #[serde(default)]
    pub metrics: crate::broker::metrics::MetricsConfig,
}

/// Flags shared by `bootserver serve` and `bootserver boot`; each overrides the config key of
/// the same name.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Network interface to serve on. Every socket is bound to it and nothing else.
    /// Default: the interface that holds --address.
    #[arg(long)]
    pub interface: Option<String>,
    /// This server's IPv4 address on that interface (DHCP server identifier, TFTP and HTTP
    /// address handed to clients). Default: the interface's first IPv4 address.
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
    /// Netmask handed to DHCP clients. Default: the interface's prefix, else 255.255.255.0.
    #[arg(long)]
    pub netmask: Option<Ipv4Addr>,
    /// Addresses handed out by DHCP, as FIRST-LAST (e.g. 10.0.0.100-10.0.0.199).
    /// Default: .100 to .199 of the server's /24.
    #[arg(long, value_name = "FIRST-LAST")]
    pub range: Option<String>,
    /// Folder whose files are served by TFTP and HTTP (read-only). Required: never the current
    /// folder, a system folder or one that holds the state dir.
    #[arg(long)]
    pub boot_dir: Option<PathBuf>,
    /// Folder for persistent state (DHCP leases). Default: /var/lib/bootserver.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// HTTP port for boot files and iPXE scripts. Default: 8080.
    #[arg(long)]
    pub http_port: Option<u16>,
    /// proxyDHCP mode: leave addresses to the LAN's DHCP server and answer only PXE clients
    /// with boot information (ports 67 and 4011).
    #[arg(long)]
    pub proxy_dhcp: bool,
    /// Kernel to boot, relative to --boot-dir or absolute. Default: vmlinuz.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs to boot, relative to --boot-dir or absolute. Default: initrd.img.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. The broker address is appended as tc.broker=IP:PORT.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// How iPXE loads kernel and initramfs. Default: http.
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Broker address written on the kernel command line for the agent.
    /// Default: this server's address, port 7000.
    #[arg(long)]
    pub broker: Option<SocketAddr>,
    /// Do not run the DHCP service (another server hands out addresses and boot files).
    #[arg(long)]
    pub no_dhcp: bool,
    /// Do not run the TFTP service.
    #[arg(long)]
    pub no_tftp: bool,
    /// Do not run the HTTP service.
    #[arg(long)]
    pub no_http: bool,
    /// Do not run the broker (agent listener on --broker, admin API, desktops): serve boot
    /// files only.
    #[arg(long)]
    pub no_broker: bool,
    /// Also take agents that speak plain TCP instead of TLS: images made before TLS, for a
    /// transition only (their hellos and session tokens cross the LAN in clear). Default: off,
    /// every agent must speak TLS and check this server's certificate.
    #[arg(long)]
    pub agent_plain_tcp: bool,
    /// Take an agent's hello whatever address it comes from. Default: a hello is taken only
    /// from the address its MAC holds (the DHCP lease, or ARP in proxyDHCP mode); turn this off
    /// only where agents reach the broker through NAT or a router.
    #[arg(long)]
    pub no_hello_binding: bool,
    /// TFTP port. Default: 69.
    #[arg(long)]
    pub tftp_port: Option<u16>,
    /// Export a folder read-only over NFSv3 as NAME=PATH (e.g. /client=/srv/client-root),
    /// to the server's subnet; repeatable. Adds to the config's [[nfs.export]] list.
    #[arg(long, value_name = "NAME=PATH")]
    pub nfs_export: Vec<String>,
    /// NFS port. Default: 2049.
    #[arg(long)]
    pub nfs_port: Option<u16>,
}

/// A validated configuration, with every default applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub range: (Ipv4Addr, Ipv4Addr),
    pub boot_dir: PathBuf,
    pub state_dir: PathBuf,
    pub http_port: u16,
    pub proxy_dhcp: bool,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub transport: Transport,
    pub broker: SocketAddr,
    pub enable_dhcp: bool,
    pub enable_tftp: bool,
    pub enable_http: bool,
    pub enable_broker: bool,
    pub agent_plain_tcp: bool,
    /// A hello is taken only from the address its MAC holds (see `broker::hello_binding`).
    pub hello_binding: bool,
    pub dhcp: DhcpConfig,
    pub tftp: TftpConfig,
    pub desktops: crate::broker::settings::BrokerConfig,
    pub nfs: NfsConfig,
    pub limits: Limits,
    pub auth: crate::accounts::AuthConfig,
    /// `[pcs]`: what each PC gets after its hello (see `broker::pcs`).
    pub pcs: crate::broker::pcs::PcsConfig,
    pub metrics: crate::broker::metrics::MetricsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        // toml's message already names the key and the line; keep it whole.
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

/// Parses `FIRST-LAST`.
pub fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not FIRST-LAST, e.g. 10.0.0.100-10.0.0.199"))?;
    let first: Ipv4Addr =
        a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let last: Ipv4Addr = b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address"))?;
    if u32::from(first) > u32::from(last) {
        return Err(format!("{first} comes after {last}; write the lower address first"));
    }
    Ok((first, last))
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, mask: Ipv4Addr) -> bool {
    u32::from(ip) & u32::from(mask) == u32::from(net) & u32::from(mask)
}

/// IPv4 addresses of this machine's interfaces, with their netmasks.
pub fn interface_addresses() -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let ip = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()).map(|s| s.ip());
            let mask = ifa.netmask.as_ref().and_then(|a| a.as_sockaddr_in()).map(|s| s.ip());
            if let (Some(ip), Some(mask)) = (ip, mask) {
                out.push((ifa.interface_name.clone(), ip, mask));
            }
        }
    }
    out
}

impl Settings {
    /// Merges defaults, file and flags, and checks the result against this machine's
    /// interfaces.
    pub fn resolve(file: FileConfig, args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::resolve_with(file, args, &interface_addresses())
    }

    pub fn resolve_with(
        file: FileConfig,
        args: &ServeArgs,
        ifaces: &[(String, Ipv4Addr, Ipv4Addr)],
    ) -> Result<Self, ConfigError> {
        let interface = args.interface.clone().or(file.interface);
        let address = args.address.or(file.address);
        let (interface, address, if_mask) = match (interface, address) {
            (Some(name), Some(addr)) => {
                let mask = ifaces.iter().find(|(n, a, _)| *n == name && *a == addr).map(|e| e.2);
                if mask.is_none() && ifaces.iter().any(|(n, _, _)| *n == name) {
                    log::warn!("interface {name} does not hold {addr}; clients may not reach it");
                }
                (name, addr, mask)
            }
            (Some(name), None) => {
                let found = ifaces.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
                    invalid(
                        "address",
                        format!("interface {name} has no IPv4 address; give one with --address"),
                    )
                })?;
                (name, found.1, Some(found.2))
            }
            (None, Some(addr)) => {
                let found = ifaces.iter().find(|(_, a, _)| *a == addr).ok_or_else(|| {
                    invalid(
                        "interface",
                        format!("no interface holds {addr}; name one with --interface"),
                    )
                })?;
                (found.0.clone(), addr, Some(found.2))
            }
            (None, None) => {
                return Err(invalid(
                    "interface",
                    "set the interface to serve on (--interface or `interface = \"eth0\"`)",
                ))
            }
        };
        let netmask = args
            .netmask
            .or(file.netmask)
            .or(if_mask)
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        if !is_contiguous_mask(netmask) {
            return Err(invalid("netmask", format!("{netmask} is not a contiguous netmask")));
        }
        let range = match args.range.as_deref().or(file.range.as_deref()) {
            Some(text) => parse_range(text).map_err(|m| invalid("range", m))?,
            None => {
                let base = u32::from(address) & 0xffff_ff00;
                (Ipv4Addr::from(base | 100), Ipv4Addr::from(base | 199))
            }
        };
        let proxy_dhcp = args.proxy_dhcp || file.proxy_dhcp.unwrap_or(false);
        if !proxy_dhcp {
            for (end, ip) in [("first", range.0), ("last", range.1)] {
                if !in_subnet(ip, address, netmask) {
                    return Err(invalid(
                        "range",
                        format!(
                            "{end} address {ip} is outside {address}/{netmask}; pick addresses in the server's subnet"
                        ),
                    ));
                }
            }
            if u32::from(range.0) <= u32::from(address) && u32::from(address) <= u32::from(range.1) {
                return Err(invalid(
                    "range",
                    format!("the range includes the server's own address {address}"),
                ));
            }
        }
        let boot_dir = args.boot_dir.clone().or(file.boot_dir).ok_or_else(|| {
            invalid(
                "boot_dir",
                "set the folder to serve (--boot-dir /srv/boot or `boot_dir = \"/srv/boot\"`); the current folder is never served by default",
            )
        })?;
        let boot_dir = boot_dir.canonicalize().map_err(|e| {
            invalid("boot_dir", format!("{}: {e}; create it or point to another folder", boot_dir.display()))
        })?;
        if !boot_dir.is_dir() {
            return Err(invalid("boot_dir", format!("{} is not a folder", boot_dir.display())));
        }
        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/bootserver"));
        check_state_dir(&state_dir).map_err(|m| invalid("state_dir", m))?;
        check_boot_dir(&boot_dir, &state_dir).map_err(|m| invalid("boot_dir", m))?;
        let http_port = args.http_port.or(file.http_port).unwrap_or(8080);
        if http_port == 0 {
            return Err(invalid("http_port", "0 is not a port; use e.g. 8080"));
        }
        let mut tftp = file.tftp;
        if let Some(p) = args.tftp_port {
            tftp.port = p;
        }
        let mut nfs = file.nfs;
        if let Some(p) = args.nfs_port {
            nfs.port = p;
        }
        for spec in &args.nfs_export {
            let (name, path) = spec.split_once('=').ok_or_else(|| {
                invalid("nfs.export", format!("--nfs-export {spec:?}: write NAME=PATH, e.g. /client=/srv/root"))
            })?;
            nfs.exports.push(ExportConfig { name: name.into(), path: path.into(), clients: Vec::new() });
        }
        let broker = args
            .broker
            .or(file.broker)
            .unwrap_or(SocketAddr::new(IpAddr::V4(address), 7000));
        Ok(Settings {
            interface,
            address,
            netmask,
            range,
            boot_dir,
            state_dir,
            http_port,
            proxy_dhcp,
            kernel: args.kernel.clone().or(file.kernel).unwrap_or_else(|| "vmlinuz".into()),
            initrd: args.initrd.clone().or(file.initrd).unwrap_or_else(|| "initrd.img".into()),
            cmdline: args.cmdline.clone().or(file.cmdline).unwrap_or_default(),
            transport: args.transport.or(file.transport).unwrap_or(Transport::Http),
            broker,
            enable_dhcp: !args.no_dhcp && file.enable_dhcp.unwrap_or(true),
            enable_tftp: !args.no_tftp && file.enable_tftp.unwrap_or(true),
            enable_http: !args.no_http && file.enable_http.unwrap_or(true),
            enable_broker: !args.no_broker && file.enable_broker.unwrap_or(true),
            agent_plain_tcp: args.agent_plain_tcp || file.agent_plain_tcp.unwrap_or(false),
            hello_binding: !args.no_hello_binding && file.hello_binding.unwrap_or(true),
            dhcp: file.dhcp,
            tftp,
            desktops: file.desktops.validate().map_err(|m| invalid("desktops", m))?,
            nfs,
            limits: file.limits.resolve().map_err(|(key, m)| invalid(key, m))?,
            auth: {
                file.auth.check().map_err(|m| invalid("auth", m))?;
                file.auth
            },
            pcs: {
                file.pcs.check().map_err(|m| invalid("pcs", m))?;
                file.pcs
            },
            metrics: file.metrics.validate().map_err(|m| invalid("metrics", m))?,
        })
    }
}

/// Folders that hold the system or other users' files: serving one hands out its secrets.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib",
    "/usr/local", "/usr/sbin", "/usr/share", "/var", "/var/lib", "/var/log", "/var/tmp",
];
/// Folders whose every subfolder is the system's too.
const SYSTEM_TREES: &[&str] = &["/boot", "/dev", "/etc", "/proc", "/root", "/sys"];

/// `path` made absolute with symlinks resolved, for a path whose end may not exist yet: the
/// longest existing ancestor is canonicalised and the rest appended.
fn canonical_lenient(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return rest.iter().rev().fold(c, |p, part| p.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

fn is_system_dir(dir: &Path) -> bool {
    let home = std::env::var_os("HOME").map(PathBuf::from).and_then(|h| h.canonicalize().ok());
    SYSTEM_TREES.iter().any(|t| dir.starts_with(t))
        || SYSTEM_DIRS.iter().any(|d| dir == Path::new(d))
        || home.as_deref() == Some(dir)
}

/// Refuses a state dir that is a system folder or a home: the server makes the state dir 0700
/// and its files 0600.
pub fn check_state_dir(state: &Path) -> Result<(), String> {
    let state = canonical_lenient(state);
    if is_system_dir(&state) {
        return Err(format!(
            "{} is a system folder or a home, and the server makes its files private; use a folder of its own, e.g. /var/lib/bootserver",
            state.display()
        ));
    }
    Ok(())
}

/// Refuses a boot dir (canonical) that is a system folder, the user's home, or holds the state
/// dir: everything in the boot dir goes to anyone on the LAN who asks.
pub fn check_boot_dir(boot: &Path, state: &Path) -> Result<(), String> {
    let fix = "point boot_dir at a folder that holds only boot files, e.g. /srv/boot";
    if is_system_dir(boot) {
        return Err(format!("{} is a system folder or a home; {fix}", boot.display()));
    }
    let state = canonical_lenient(state);
    if state.starts_with(boot) {
        return Err(format!(
            "{} holds the state dir {} (session tokens, leases); {fix}, or move state_dir out of it",
            boot.display(),
            state.display()
        ));
    }
    Ok(())
}

fn is_contiguous_mask(mask: Ipv4Addr) -> bool {
    let m = u32::from(mask);
    m.leading_ones() + m.trailing_zeros() == 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifaces() -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
        vec![("br0".into(), Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(255, 255, 255, 0))]
    }

    fn args() -> ServeArgs {
        ServeArgs { boot_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")), ..Default::default() }
    }

    #[test]
    fn boot_dir_is_required_and_never_a_system_folder_or_the_states_parent() {
        let a = ServeArgs { interface: Some("br0".into()), boot_dir: None, ..Default::default() };
        let e = Settings::resolve_with(FileConfig::default(), &a, &ifaces()).unwrap_err().to_string();
        assert!(e.starts_with("key `boot_dir`: set the folder"), "{e}");
        let state = Path::new("/var/lib/bootserver");
        for bad in ["/", "/etc", "/etc/ssl", "/usr", "/var", "/proc/1", "/tmp"] {
            let e = check_boot_dir(Path::new(bad), state).unwrap_err();
            assert!(e.contains("system folder"), "{bad}: {e}");
        }
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().canonicalize().unwrap();
        // The state dir inside the boot dir, or the boot dir itself, even through `..` and
        // before the state dir exists.
        for state in [boot.join("state"), boot.clone(), boot.join("x/../y/state")] {
            let e = check_boot_dir(&boot, &state).unwrap_err();
            assert!(e.contains("holds the state dir"), "{}: {e}", state.display());
        }
        std::fs::create_dir(boot.join("www")).unwrap();
        check_boot_dir(&boot.join("www"), &boot.join("state")).unwrap();
        // A boot dir inside the state dir (`bootserver boot` serves STATE/www) shows nothing
        // of the state.
        check_boot_dir(&boot.join("www"), &boot).unwrap();
        for bad in ["/var/lib", "/tmp", "/etc/bootserver", "/"] {
            let e = check_state_dir(Path::new(bad)).unwrap_err();
            assert!(e.contains("system folder"), "{bad}: {e}");
        }
        check_state_dir(Path::new("/var/lib/bootserver")).unwrap();
    }

    #[test]
    fn derives_address_and_range_from_interface() {
        let a = ServeArgs { interface: Some("br0".into()), ..args() };
        let s = Settings::resolve_with(FileConfig::default(), &a, &ifaces()).unwrap();
        assert_eq!(s.address, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(s.range, (Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 199)));
        assert_eq!(s.broker, "10.9.0.1:7000".parse().unwrap());
        assert_eq!(s.http_port, 8080);
    }

    #[test]
    fn flags_override_file() {
        let file = FileConfig::parse("interface = \"br0\"\nhttp_port = 81\nrange = \"10.9.0.10-10.9.0.20\"").unwrap();
        let a = ServeArgs { http_port: Some(82), ..args() };
        let s = Settings::resolve_with(file, &a, &ifaces()).unwrap();
        assert_eq!(s.http_port, 82);
        assert_eq!(s.range.0, Ipv4Addr::new(10, 9, 0, 10));
    }

    #[test]
    fn errors_name_the_key() {
        let e = FileConfig::parse("interfce = \"br0\"").unwrap_err();
        assert!(e.contains("interfce"), "{e}");
        let file = FileConfig::parse("interface = \"br0\"\nrange = \"10.8.0.1-10.8.0.9\"").unwrap();
        let e = Settings::resolve_with(file, &args(), &ifaces()).unwrap_err().to_string();
        assert!(e.starts_with("key `range`"), "{e}");
        let e = Settings::resolve_with(FileConfig::default(), &args(), &ifaces()).unwrap_err();
        assert!(e.to_string().contains("key `interface`"), "{e}");
        let a = ServeArgs { range: Some("10.9.0.5-10.9.0.2".into()), interface: Some("br0".into()), ..args() };
        let e = Settings::resolve_with(FileConfig::default(), &a, &ifaces()).unwrap_err();
        assert!(e.to_string().contains("lower address first"), "{e}");
    }

    #[test]
    fn auth_keys_are_checked_at_start() {
        let s = Settings::resolve_with(FileConfig::parse("interface = \"br0\"").unwrap(), &args(), &ifaces()).unwrap();
        assert_eq!(s.auth.backends, [crate::accounts::auth::BackendKind::Local]);
        for (text, want) in [
            ("[auth]\nbackends = [\"local\", \"ldap\"]", "[auth.ldap]"),
            ("[auth.ldap]\nurl = \"ldap://10.0.0.5\"\nuser_dn = \"uid={user},dc=x\"", "in clear"),
        ] {
            let file = FileConfig::parse(&format!("interface = \"br0\"\n{text}")).unwrap();
            let e = Settings::resolve_with(file, &args(), &ifaces()).unwrap_err().to_string();
            assert!(e.starts_with("key `auth`") && e.contains(want), "{e}");
        }
        assert!(FileConfig::parse("[auth]\nbackend = [\"local\"]").unwrap_err().contains("backend"));
    }
}
