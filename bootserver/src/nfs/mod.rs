//! NFSv3 service: folders exported read-only to chosen clients, with MOUNT and the portmapper
//! the Linux kernel client needs, bound to the boot server's interface. The protocol itself is
//! the `nfsserve` crate (vendored with an access-policy hook, see its VENDORED.md).

pub mod export;
pub mod portmap;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use nfsserve::context::AccessPolicy;
use nfsserve::tcp::{NFSTcp, NFSTcpListener};
use serde::Deserialize;

use export::{Export, ExportFs};

/// The `[nfs]` table of the config file. The service runs when at least one export is listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NfsConfig {
    /// TCP port for NFS and MOUNT.
    pub port: u16,
    /// Also answer portmapper lookups on port 111 (TCP and UDP). Turn off when the machine
    /// runs its own rpcbind.
    pub portmap: bool,
    #[serde(rename = "export")]
    pub exports: Vec<ExportConfig>,
}

impl Default for NfsConfig {
    fn default() -> Self {
        NfsConfig { port: 2049, portmap: true, exports: Vec::new() }
    }
}

/// `[[nfs.export]]`: one folder, mounted by clients as `SERVER:/NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Mount path, `/name` (one component).
    pub name: String,
    pub path: PathBuf,
    /// Who may mount it: addresses or CIDR blocks (`10.0.0.0/24`). Default: the server's subnet.
    #[serde(default)]
    pub clients: Vec<String>,
}

/// An IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u32,
    mask: u32,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => {
                let len: u32 = len.parse().map_err(|_| format!("{text:?}: bad prefix length"))?;
                if len > 32 {
                    return Err(format!("{text:?}: prefix length over 32"));
                }
                (ip, len)
            }
            None => (text, 32),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{text:?} is not an IPv4 address or network"))?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Cidr { net: u32::from(ip) & mask, mask })
    }

    pub fn from_subnet(addr: Ipv4Addr, netmask: Ipv4Addr) -> Self {
        let mask = u32::from(netmask);
        Cidr { net: u32::from(addr) & mask, mask }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return false,
            },
        };
        u32::from(v4) & self.mask == self.net
    }
}

/// Exports with their allowed clients, checked on every connection and every MOUNT.
struct Policy {
    exports: Vec<(Export, Vec<Cidr>)>,
}

impl AccessPolicy for Policy {
    fn allow_connection(&self, peer: &SocketAddr) -> bool {
        let ok = self.exports.iter().any(|(_, c)| c.iter().any(|n| n.contains(peer.ip())));
        if !ok {
            log::warn!("nfs: refused connection from {peer}: not a client of any export");
        }
        ok
    }

    fn allow_mount(&self, peer: &str, path: &[u8]) -> bool {
        let ip = peer.parse::<SocketAddr>().map(|s| s.ip()).ok();
        let p = String::from_utf8_lossy(path);
        // An export or a folder inside one, as knfsd allows: `/client` or `/client/usr`.
        let top = p.trim_start_matches('/').split('/').next().unwrap_or("");
        let found = self.exports.iter().find(|(e, _)| e.name.trim_start_matches('/') == top);
        let ok = match (found, ip) {
            (Some((_, clients)), Some(ip)) => clients.iter().any(|n| n.contains(ip)),
            _ => false,
        };
        if ok {
            log::info!("nfs: {peer} mounted {p}");
        } else {
            log::warn!("nfs: refused mount of {p:?} by {peer}");
        }
        ok
    }

    fn exports(&self) -> Vec<Vec<u8>> {
        self.exports.iter().map(|(e, _)| e.name.as_bytes().to_vec()).collect()
    }
}

/// Checks the `[nfs]` table against the server's subnet.
pub fn validate(cfg: &NfsConfig, address: Ipv4Addr, netmask: Ipv4Addr) -> anyhow::Result<Vec<(Export, Vec<Cidr>)>> {
    let mut out = Vec::new();
    for (i, e) in cfg.exports.iter().enumerate() {
        let name = e.name.trim_end_matches('/');
        if !name.starts_with('/') || name.len() < 2 || name[1..].contains('/') {
            anyhow::bail!("key `nfs.export[{i}].name`: {:?} must be one component such as \"/client\"", e.name);
        }
        if out.iter().any(|(x, _): &(Export, Vec<Cidr>)| x.name == name) {
            anyhow::bail!("key `nfs.export[{i}].name`: {name} is exported twice");
        }
        let path = e.path.canonicalize().with_context(|| {
            format!("key `nfs.export[{i}].path`: {} does not exist; create it or fix the path", e.path.display())
        })?;
        if !path.is_dir() {
            anyhow::bail!("key `nfs.export[{i}].path`: {} is not a folder", path.display());
        }
        let clients = if e.clients.is_empty() {
            vec![Cidr::from_subnet(address, netmask)]
        } else {
            e.clients
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| anyhow::anyhow!("key `nfs.export[{i}].clients`: {m}"))?
        };
        out.push((Export { name: name.to_string(), path }, clients));
    }
    Ok(out)
}

/// Serves the exports until a listener fails.
pub async fn run(interface: String, address: Ipv4Addr, netmask: Ipv4Addr, cfg: NfsConfig) -> anyhow::Result<()> {
    let exports = validate(&cfg, address, netmask)?;
    let fs = ExportFs::new(exports.iter().map(|(e, _)| e.clone()).collect())?;
    let policy: Arc<dyn AccessPolicy> = Arc::new(Policy { exports });
    let addr = SocketAddr::new(address.into(), cfg.port);
    let listener = crate::net::tcp_listener(&interface, addr)?;
    let nfs = NFSTcpListener::from_listener(listener, fs.clone(), policy.clone(), None)?;
    for e in fs.exports() {
        log::info!("nfs: exporting {} as {}:{} (read-only) on {addr}", e.path.display(), address, e.name);
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { nfs.handle_forever().await.context("nfs listener") });
    if cfg.portmap {
        let pm_addr = SocketAddr::new(address.into(), portmap::PMAP_PORT);
        let pm_tcp = crate::net::tcp_listener(&interface, pm_addr)
            .context("portmapper on port 111 (set nfs.portmap = false if rpcbind runs here)")?;
        let pm = NFSTcpListener::from_listener(pm_tcp, fs, policy, Some(cfg.port))?;
        tasks.spawn(async move { pm.handle_forever().await.context("portmapper (tcp)") });
        let udp = crate::net::udp_socket(&interface, pm_addr, false)?;
        let port = cfg.port;
        tasks.spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let (n, peer) = udp.recv_from(&mut buf).await.context("portmapper (udp)")?;
                match portmap::reply(&buf[..n], port) {
                    Ok(r) => {
                        if let Err(e) = udp.send_to(&r, peer).await {
                            log::debug!("nfs: portmap reply to {peer}: {e}");
                        }
                    }
                    Err(e) => log::debug!("nfs: dropped portmap datagram from {peer}: {e}"),
                }
            }
        });
    }
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(anyhow::anyhow!("nfs task failed: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("x/8").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        let cfg = |name: &str, path: PathBuf, clients: Vec<String>| NfsConfig {
            exports: vec![ExportConfig { name: name.into(), path, clients }],
            ..Default::default()
        };
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let m = Ipv4Addr::new(255, 255, 255, 0);
        let ok = validate(&cfg("/root", d.path().into(), vec![]), a, m).unwrap();
        assert_eq!(ok[0].1, vec![Cidr::parse("10.0.0.0/24").unwrap()]);
        let e = validate(&cfg("root", d.path().into(), vec![]), a, m).unwrap_err().to_string();
        assert!(e.contains("nfs.export[0].name"), "{e}");
        let e = validate(&cfg("/r", d.path().join("missing"), vec![]), a, m).unwrap_err().to_string();
        assert!(e.contains("nfs.export[0].path"), "{e}");
        let e = validate(&cfg("/r", d.path().into(), vec!["nonsense".into()]), a, m).unwrap_err().to_string();
        assert!(e.contains("nfs.export[0].clients"), "{e}");
    }
}
