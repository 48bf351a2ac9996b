//! NFSv3 service: folders exported read-only to chosen clients, with MOUNT and the portmapper
//! the Linux kernel client needs, bound to the boot server's interface. The protocol itself is
//! the `nfsserve` crate (vendored with an access-policy hook, see its PATCHES.md).

pub mod export;
pub mod portmap;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nfsserve::context::AccessPolicy;
use nfsserve::nfs::fileid3;
use nfsserve::rpcwire::RecordLimits;
use nfsserve::tcp::{ConnectionLimits, ConnectionTable, NFSTcp, NFSTcpListener};
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
    /// Connections open at once on the NFS and portmapper TCP ports together. At the cap,
    /// the connection idle longest is closed for a new one.
    pub max_connections: usize,
    /// Connections open at once from one address; at the cap, that address's idle
    /// connection is closed for its new one, or the new one refused.
    pub max_connections_per_peer: usize,
    /// Seconds a new connection has to send its first call, and any call to arrive whole.
    pub handshake_timeout: u64,
    /// Seconds without a call after which a connection is closed (clients reconnect).
    pub idle_timeout: u64,
    #[serde(rename = "export")]
    pub exports: Vec<ExportConfig>,
}

impl Default for NfsConfig {
    fn default() -> Self {
        let limits = ConnectionLimits::default();
        NfsConfig {
            port: 2049,
            portmap: true,
            max_connections: limits.max_connections,
            max_connections_per_peer: limits.max_connections_per_peer,
            handshake_timeout: limits.handshake_timeout.as_secs(),
            idle_timeout: limits.idle_timeout.as_secs(),
            exports: Vec::new(),
        }
    }
}

impl NfsConfig {
    /// The connection limits these keys set, or which key is out of range.
    pub fn limits(&self) -> anyhow::Result<ConnectionLimits> {
        for (key, v) in [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_peer", self.max_connections_per_peer as u64),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if v == 0 {
                anyhow::bail!("key `nfs.{key}`: 0 would refuse every client; use a positive number");
            }
        }
        Ok(ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            record: RecordLimits { max_record: export::MAX_READ as usize + (64 << 10), ..RecordLimits::default() },
            ..ConnectionLimits::default()
        })
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

/// Exports with their allowed clients, checked on every connection, every MOUNT and every
/// file handle of every call.
struct Policy {
    exports: Vec<(Export, Vec<Cidr>)>,
    /// Mounts go to the boot-stage reports, and the bytes each PC reads after them.
    stages: crate::stages::Sink,
    /// Bytes read per client since the last [`Policy::report_reads`]. A READ is at most a
    /// megabyte and a boot makes thousands: the report (and its store and page events) gets
    /// the sums once a second, not every call. One entry per client address of an export.
    reads: std::sync::Mutex<std::collections::HashMap<Ipv4Addr, u64>>,
}

/// How often the bytes read go to the boot-stage reports.
const READS_EVERY: Duration = Duration::from_secs(1);

impl Policy {
    fn new(exports: Vec<(Export, Vec<Cidr>)>, stages: crate::stages::Sink) -> Policy {
        Policy { exports, stages, reads: Default::default() }
    }

    /// Adds the bytes read since the last call to each client's NFS mount stage.
    fn report_reads(&self) {
        let reads = std::mem::take(&mut *self.reads.lock().unwrap_or_else(|p| p.into_inner()));
        for (ip, bytes) in reads {
            self.stages.record_from(ip, crate::stages::Event::NfsRead { bytes });
        }
    }
}

fn peer_ip(peer: &str) -> Option<IpAddr> {
    peer.parse::<SocketAddr>().map(|s| s.ip()).ok()
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
        let ip = peer_ip(peer);
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
        if let Some(IpAddr::V4(ip)) = ip {
            let error = (!ok).then(|| "mount refused: not a client of this export".to_string());
            let event = crate::stages::Event::File {
                name: format!("mount {p}"),
                protocol: crate::stages::Protocol::Nfs,
                bytes: None,
                ms: 0,
                error,
            };
            self.stages.record_from(ip, event);
        }
        ok
    }

    fn exports(&self) -> Vec<Vec<u8>> {
        self.exports.iter().map(|(e, _)| e.name.as_bytes().to_vec()).collect()
    }

    fn read_served(&self, peer: &str, bytes: u64) {
        if let Some(IpAddr::V4(ip)) = peer_ip(peer) {
            *self.reads.lock().unwrap_or_else(|p| p.into_inner()).entry(ip).or_default() += bytes;
        }
    }

    fn allow_file(&self, peer: &str, id: fileid3) -> bool {
        let clients = export::export_of(id).and_then(|i| self.exports.get(i)).map(|(_, c)| c);
        let ok = match (clients, peer_ip(peer)) {
            (Some(clients), Some(ip)) => clients.iter().any(|n| n.contains(ip)),
            _ => false,
        };
        if !ok {
            log::debug!("nfs: refused a call from {peer} on file {id:#x}: not a client of its export");
        }
        ok
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

/// Serves the exports. Errors on sockets are logged and retried; only a failure to start
/// ends it. `state_dir` keeps the key that signs file handles.
pub async fn run(
    interface: String,
    address: Ipv4Addr,
    netmask: Ipv4Addr,
    cfg: NfsConfig,
    state_dir: PathBuf,
    stages: crate::stages::Sink,
) -> anyhow::Result<()> {
    let exports = validate(&cfg, address, netmask)?;
    let limits = cfg.limits()?;
    let key = export::handle_key(&state_dir)?;
    let fs = ExportFs::new(exports.iter().map(|(e, _)| e.clone()).collect(), &key)?;
    let counted = Arc::new(Policy::new(exports, stages));
    let policy: Arc<dyn AccessPolicy> = counted.clone();
    let addr = SocketAddr::new(address.into(), cfg.port);
    let listener = crate::net::tcp_listener(&interface, addr)?;
    // One table for the NFS and portmapper ports: a client needs both, and descriptors run
    // short for both at once.
    let table = Arc::new(ConnectionTable::new(limits));
    let nfs = NFSTcpListener::from_listener(listener, fs.clone(), policy.clone(), None)?.with_connections(table.clone());
    for e in fs.exports() {
        log::info!("nfs: exporting {} as {}:{} (read-only) on {addr}", e.path.display(), address, e.name);
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { nfs.handle_forever().await.context("nfs listener") });
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(READS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            counted.report_reads();
        }
    });
    if cfg.portmap {
        let pm_addr = SocketAddr::new(address.into(), portmap::PMAP_PORT);
        let pm_tcp = crate::net::tcp_listener(&interface, pm_addr)
            .context("portmapper on port 111 (set nfs.portmap = false if rpcbind runs here)")?;
        let pm = NFSTcpListener::from_listener(pm_tcp, fs, policy, Some(cfg.port))?.with_connections(table);
        tasks.spawn(async move { pm.handle_forever().await.context("portmapper (tcp)") });
        let udp = crate::net::udp_socket(&interface, pm_addr, false)?;
        let port = cfg.port;
        tasks.spawn(async move {
            let mut buf = vec![0u8; 1500];
            let mut pause = Duration::from_millis(50);
            loop {
                let (n, peer) = match udp.recv_from(&mut buf).await {
                    Ok(got) => got,
                    Err(e) => {
                        // An ICMP error queued on the socket, or memory short: not the end of
                        // the service.
                        log::warn!("nfs: portmapper (udp) on {pm_addr}: {e}; retrying in {pause:?}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                };
                pause = Duration::from_millis(50);
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

/// Bytes as the NFS port receives them (records of calls, answered by a read-only export
/// of a small tree) and as a portmapper datagram: the entry point of the `nfs_rpc` fuzz
/// target. Any panic is a bug; so is a record over the limits that gets answered.
pub fn fuzz_one(data: &[u8]) {
    use std::sync::OnceLock;
    struct Fuzz {
        runtime: tokio::runtime::Runtime,
        context: nfsserve::context::RPCContext,
        limits: RecordLimits,
    }
    static FUZZ: OnceLock<Option<Fuzz>> = OnceLock::new();
    let _ = portmap::reply(data, 2049);
    let Some(f) = FUZZ.get_or_init(|| {
        // A tree of its own per process, so that runs in parallel do not share one.
        let root = std::env::temp_dir().join(format!("bootserver-fuzz-nfs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("dir/sub")).ok()?;
        std::fs::write(root.join("dir/file"), vec![7u8; 5000]).ok()?;
        let _ = std::os::unix::fs::symlink("../..", root.join("dir/up"));
        let exports = vec![(Export { name: "/client".into(), path: root }, vec![Cidr::parse("0.0.0.0/0").ok()?])];
        let fs = ExportFs::new(exports.iter().map(|(e, _)| e.clone()).collect(), &[1; 32]).ok()?;
        let context = nfsserve::context::RPCContext {
            policy: Arc::new(Policy::new(exports, Default::default())),
            local_port: 2049,
            client_addr: "10.0.0.2:700".into(),
            auth: Default::default(),
            vfs: Arc::new(fs),
            mount_signal: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().ok()?;
        let limits = NfsConfig::default().limits().ok()?.record;
        Some(Fuzz { runtime, context, limits })
    }) else {
        return;
    };
    let (records, _) = nfsserve::rpcwire::split_records(data, &f.limits);
    for record in records {
        assert!(record.len() <= f.limits.max_record);
        let _ = f.runtime.block_on(nfsserve::rpcwire::handle_record(record, f.context.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_keys() {
        let cfg: NfsConfig = toml::from_str("max_connections = 5\nmax_connections_per_peer = 2\nidle_timeout = 9").unwrap();
        let l = cfg.limits().unwrap();
        assert_eq!((l.max_connections, l.max_connections_per_peer), (5, 2));
        assert_eq!(l.idle_timeout, Duration::from_secs(9));
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert!(l.record.max_record > export::MAX_READ as usize);
        let cfg = NfsConfig { max_connections_per_peer: 0, ..NfsConfig::default() };
        let e = cfg.limits().unwrap_err().to_string();
        assert!(e.contains("nfs.max_connections_per_peer"), "{e}");
    }

    #[test]
    fn fuzz_entry_survives_hostile_records() {
        // Portmapper NULL, NFS NULL, GETATTR with a forged handle, a huge gid count, a
        // huge record mark.
        let rec = |w: &[u32]| {
            let body: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
            [&(0x8000_0000u32 | body.len() as u32).to_be_bytes()[..], &body].concat()
        };
        let mut stream = rec(&[1, 0, 2, 100_000, 2, 0, 0, 0, 0, 0]);
        stream.extend(rec(&[2, 0, 2, 100_003, 3, 0, 0, 0, 0, 0]));
        stream.extend(rec(&[3, 0, 2, 100_003, 3, 1, 0, 0, 0, 0, 24, 1, 0, 0, 0, 0, 0]));
        stream.extend(rec(&[4, 0, 2, 100_003, 3, 0, 1, 24, 0, 0, 0, 0, 0x4000_0000, 0, 0, 0]));
        stream.extend(0xffff_ffffu32.to_be_bytes());
        fuzz_one(&stream);
        fuzz_one(&[]);
    }

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
