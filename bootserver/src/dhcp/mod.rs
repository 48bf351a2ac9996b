//! DHCP service (RFC 2131/2132 with the PXE options of RFC 4578), proxyDHCP, and the IPv6
//! router advertisement that spares iPXE its autoconfiguration wait.
//!
//! `packet` parses and emits, `lease` keeps the table, `pxe` picks boot files, `server` decides,
//! `ping` sends the ping check's echo requests; this module only moves datagrams and ping
//! outcomes between sockets and [`server::Server`].

pub(crate) mod lease;
pub(crate) mod packet;
pub(crate) mod ping;
pub(crate) mod pxe;
pub mod ra;
pub(crate) mod server;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Deserialize;
use tokio::net::UdpSocket;

use crate::config::Settings;
use crate::http::ipxe::BootPlan;
use crate::ratelimit::Rate;
pub use lease::LeaseView;
use lease::{FileStore, LeaseStore, LeaseTable, Unsaved};
use ping::Pinger;
use pxe::BootChoice;
use server::{Action, CoreConfig, Dropped, Outgoing, Server, Via};

/// The `[dhcp]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// Lease time in seconds. Clients renew at half and rebind at 7/8 of it.
    pub lease_time: u32,
    /// Seconds a DECLINEd address (or one that answered the ping check) stays out of the pool.
    pub quarantine_time: u32,
    /// Ping an address before offering it to a client that does not hold it, and skip it if
    /// it answers.
    pub ping_check: bool,
    /// Milliseconds to wait for the ping check's echo reply.
    pub ping_timeout_ms: u32,
    /// Default gateway handed to clients (option 3). None: no router option.
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed to clients (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Boot file for BIOS PXE ROMs (client architecture 0).
    pub bios_boot_file: String,
    /// Boot file for UEFI x64 PXE ROMs (client architectures 7 and 9).
    pub uefi_boot_file: String,
    /// Boot file for other architectures; none: they get an address but no boot file.
    pub other_boot_file: Option<String>,
    /// Send IPv6 router advertisements (no prefix, M=0 O=0, router lifetime 0) so that iPXE
    /// ends its IPv6 autoconfiguration at once instead of waiting for it to time out.
    pub router_advertisement: bool,
    /// Seconds between unsolicited router advertisements (solicitations are answered at once).
    pub ra_interval: u32,
    /// Fixed addresses by MAC.
    #[serde(rename = "reservation")]
    pub reservations: Vec<Reservation>,
    /// Messages handled per second from one client (client identifier, else MAC), once its
    /// burst is spent; more are dropped. 0: only the burst, then nothing.
    pub client_rate: u32,
    /// Messages one client may send in a burst.
    pub client_burst: u32,
    /// Messages handled per second from all clients together, once the burst is spent.
    pub total_rate: u32,
    /// Messages from all clients handled in a burst.
    pub total_burst: u32,
    /// Milliseconds a lease change that need not be on disk before the reply (a renewal, a
    /// release, an expiry) may wait to be saved. New bindings are saved before their ACK.
    pub lease_save_ms: u64,
    /// PXE and iPXE boot information only for MACs an administrator approved (see
    /// `broker::enrolment`); others get an address without it and show as pending.
    pub pxe_enrolled_only: bool,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            lease_time: 3600,
            quarantine_time: 600,
            ping_check: true,
            ping_timeout_ms: 500,
            router: None,
            dns: Vec::new(),
            domain: None,
            bios_boot_file: "undionly.kpxe".into(),
            uefi_boot_file: "ipxe.efi".into(),
            other_boot_file: None,
            router_advertisement: true,
            ra_interval: 60,
            reservations: Vec::new(),
            client_rate: 2,
            client_burst: 10,
            total_rate: 200,
            total_burst: 400,
            lease_save_ms: 1000,
            pxe_enrolled_only: false,
        }
    }
}

/// `[[dhcp.reservation]]`: a fixed address for one MAC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub address: Ipv4Addr,
    /// Host name handed to that client (option 12).
    pub hostname: Option<String>,
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`), normalized to lower case with colons.
pub(crate) fn parse_mac(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    ok.then(|| parts.join(":").to_ascii_lowercase())
}

/// Longest ping check wait accepted: clients retransmit their DISCOVER after a few seconds.
const MAX_PING_TIMEOUT_MS: u32 = 5000;

impl DhcpConfig {
    /// The ping check's wait, None when the check is off.
    pub(crate) fn checked_ping_timeout(&self) -> anyhow::Result<Option<Duration>> {
        if !self.ping_check {
            return Ok(None);
        }
        let ms = self.ping_timeout_ms;
        if ms == 0 || ms > MAX_PING_TIMEOUT_MS {
            anyhow::bail!(
                "key `dhcp.ping_timeout_ms`: {ms} ms is out of range; use 1 to {MAX_PING_TIMEOUT_MS} \
                 (default 500), or `ping_check = false` to offer addresses without pinging them"
            );
        }
        Ok(Some(Duration::from_millis(ms.into())))
    }

    /// Checks the table against the server's subnet; returns the reservations as
    /// (normalized MAC, address).
    pub(crate) fn checked_reservations(&self, s: &Settings) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
        if self.lease_time < 4 {
            anyhow::bail!("key `dhcp.lease_time`: {} s is too short; use at least 4", self.lease_time);
        }
        let mask = u32::from(s.netmask);
        let mut out: Vec<(String, Ipv4Addr)> = Vec::new();
        for r in &self.reservations {
            let mac = parse_mac(&r.mac).with_context(|| {
                format!("key `dhcp.reservation.mac`: {:?} is not a MAC like aa:bb:cc:dd:ee:ff", r.mac)
            })?;
            let a = r.address;
            if u32::from(a) & mask != u32::from(s.address) & mask || a == s.address {
                anyhow::bail!(
                    "key `dhcp.reservation.address`: {a} (for {mac}) is not a client address of {}/{}",
                    s.address,
                    s.netmask
                );
            }
            if let Some((m, _)) = out.iter().find(|(m, b)| *m == mac || *b == a) {
                anyhow::bail!("key `dhcp.reservation`: {mac} -> {a} clashes with the reservation of {m}");
            }
            out.push((mac, a));
        }
        Ok(out)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The running DHCP (or proxyDHCP) service: its sockets and its decision core.
pub struct Service {
    server: Server,
    dhcp: UdpSocket,
    /// Port 4011, in proxyDHCP mode only.
    pxe: Option<UdpSocket>,
    /// The ping check's socket, when the check is on.
    pinger: Option<Pinger>,
    /// Replies decided and not sent yet: those that acknowledge a new binding wait for the
    /// lease table to be saved.
    outbox: Vec<Outgoing>,
    /// How long a change that need not be saved before its reply may wait.
    save_every: Duration,
    /// When such changes are due on disk.
    save_due: Option<tokio::time::Instant>,
    /// Offers and acknowledgements go to the boot-stage reports.
    stages: crate::stages::Sink,
    /// `pxe_enrolled_only`: where held-back PCs are recorded as pending.
    enrolments: Option<std::sync::Arc<crate::broker::enrolment::Gate>>,
}

/// Datagrams already queued that are decided together, with one save of the lease table for
/// all of them. A flood of REQUESTs then costs one fsync per batch, not per message.
const BATCH: usize = 64;
/// How often the messages dropped by the rate limits are reported.
const TICK: Duration = Duration::from_secs(30);

/// What woke the loop.
enum Event {
    Datagram(usize, SocketAddr, Via),
    PingOutcome(Ipv4Addr, bool),
    Tick,
    Save,
}

impl Service {
    /// Loads the lease table from the state dir and binds 0.0.0.0:67 (and :4011 in proxy mode)
    /// on the configured interface only; `view` follows the table's bindings.
    pub fn bind(s: &Settings, plan: &BootPlan, view: LeaseView) -> anyhow::Result<Service> {
        let store: Box<dyn LeaseStore> = Box::new(FileStore::new(&s.state_dir));
        let mut service = Self::bind_with(s, plan, store)?;
        service.server.leases.publish_to(view);
        Ok(service)
    }

    pub(crate) fn bind_with(s: &Settings, plan: &BootPlan, store: Box<dyn LeaseStore>) -> anyhow::Result<Service> {
        let d = &s.dhcp;
        let reservations = d.checked_reservations(s)?;
        let ping_timeout = d.checked_ping_timeout()?.filter(|_| !s.proxy_dhcp);
        let pinger = match ping_timeout.map(|t| Pinger::open(&s.interface, t)).transpose() {
            Ok(p) => p,
            Err(e) => {
                // Serving without the check beats not serving: it is a safeguard, and DECLINE
                // still catches conflicts the clients see.
                log::warn!("dhcp: ping check off: {e:#}; set `dhcp.ping_check = false` to silence this");
                None
            }
        };
        let table = LeaseTable::open(s.range, vec![s.address], &reservations, store)
            .with_context(|| format!("loading leases from {}", s.state_dir.display()))?;
        let cfg = CoreConfig {
            address: s.address,
            netmask: s.netmask,
            lease_time: d.lease_time,
            quarantine: d.quarantine_time,
            router: d.router,
            dns: d.dns.clone(),
            domain: d.domain.clone(),
            host_names: d
                .reservations
                .iter()
                .filter_map(|r| Some((parse_mac(&r.mac)?, r.hostname.clone()?)))
                .collect(),
            proxy: s.proxy_dhcp,
            boot: BootChoice {
                bios: d.bios_boot_file.clone(),
                uefi: d.uefi_boot_file.clone(),
                other: d.other_boot_file.clone(),
                script_url: plan.script_url(),
            },
            ping_check: pinger.is_some(),
            limits: Some(server::Limits {
                per_client: Rate::per_sec(d.client_rate, d.client_burst),
                total: Rate::per_sec(d.total_rate, d.total_burst),
            }),
        };
        let any = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let dhcp = crate::net::udp_socket(&s.interface, any(server::SERVER_PORT), true)?;
        let pxe = if s.proxy_dhcp {
            Some(crate::net::udp_socket(&s.interface, any(server::PXE_PORT), true)?)
        } else {
            None
        };
        if s.proxy_dhcp {
            log::info!("dhcp: proxyDHCP for PXE clients on {} (ports 67 and 4011)", s.interface);
        } else {
            let ping = match ping_timeout.filter(|_| pinger.is_some()) {
                Some(t) => format!("ping check {} ms", t.as_millis()),
                None => "no ping check".into(),
            };
            log::info!(
                "dhcp: serving {}-{} on {}, lease {} s, {} reservation(s), {ping}",
                s.range.0,
                s.range.1,
                s.interface,
                d.lease_time,
                reservations.len()
            );
        }
        Ok(Service {
            server: Server::new(cfg, table),
            dhcp,
            pxe,
            pinger,
            outbox: Vec::new(),
            save_every: Duration::from_millis(d.lease_save_ms),
            save_due: None,
            stages: crate::stages::Sink::default(),
            enrolments: None,
        })
    }

    /// Reports offers and acknowledgements to `stages`.
    pub fn with_stages(mut self, stages: crate::stages::Sink) -> Service {
        self.stages = stages;
        self
    }

    /// An offer is the `dhcp_offered` stage; an ACK gives the PC its address, by which the
    /// file servers know it.
    fn report(&self, out: &Outgoing) {
        use crate::stages::{DhcpClient, Event, ServerMode};
        let r = &out.reply;
        let mac = packet::hex(&r.chaddr);
        let address = if r.yiaddr.is_unspecified() { r.ciaddr } else { r.yiaddr };
        let event = match r.msg_type {
            smoltcp::wire::DhcpMessageType::Offer => Event::Offered {
                address: (!address.is_unspecified()).then_some(address),
                mode: if self.pxe.is_some() { ServerMode::ProxyDhcp } else { ServerMode::Dhcp },
                client: match out.client {
                    pxe::ClientKind::Plain => DhcpClient::Plain,
                    pxe::ClientKind::Pxe { .. } => DhcpClient::Pxe,
                    pxe::ClientKind::Ipxe => DhcpClient::Ipxe,
                },
                boot_file: r.file.clone(),
            },
            smoltcp::wire::DhcpMessageType::Ack if !address.is_unspecified() => Event::Acked { address },
            _ => return,
        };
        self.stages.record(&mac, event);
    }

    /// Answers until a socket fails.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 65536];
        let mut pxe_buf = vec![0u8; 65536];
        let mut tick = tokio::time::interval(TICK);
        loop {
            let pxe = async {
                match &self.pxe {
                    Some(s) => s.recv_from(&mut pxe_buf).await,
                    None => std::future::pending().await,
                }
            };
            let ping = async {
                match &mut self.pinger {
                    Some(p) => p.next().await,
                    None => std::future::pending().await,
                }
            };
            let save_due = self.save_due;
            let save = async move {
                match save_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                r = self.dhcp.recv_from(&mut buf) => {
                    let (n, p) = r.context("dhcp: receiving on port 67")?;
                    Event::Datagram(n, p, Via::Dhcp)
                }
                r = pxe => {
                    let (n, p) = r.context("dhcp: receiving on port 4011")?;
                    Event::Datagram(n, p, Via::Pxe)
                }
                r = ping => {
                    let (ip, answered) = r.context("dhcp: ping check")?;
                    Event::PingOutcome(ip, answered)
                }
                _ = tick.tick() => Event::Tick,
                _ = save => Event::Save,
            };
            match event {
                Event::Tick => {
                    match self.server.leases.expire(now()) {
                        0 => {}
                        n => log::debug!("dhcp: {n} lease(s) expired"),
                    }
                    let dropped = std::mem::take(&mut self.server.rate_limited);
                    if dropped > 0 {
                        log::warn!(
                            "dhcp: {dropped} message(s) over the rate limits dropped in the last {} s",
                            TICK.as_secs()
                        );
                    }
                }
                Event::Save => {}
                Event::PingOutcome(ip, answered) => {
                    let result = self.server.probe_done(ip, answered, now());
                    self.act(result, Origin::Ping(ip));
                }
                Event::Datagram(len, peer, via) => {
                    let data = if via == Via::Pxe { &pxe_buf[..len] } else { &buf[..len] };
                    self.datagram(data, via, peer);
                    // Whatever else is queued on port 67 is decided now, and saved with it.
                    for _ in 1..BATCH {
                        match self.dhcp.try_recv_from(&mut buf) {
                            Ok((len, peer)) => self.datagram(&buf[..len], Via::Dhcp, peer),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e).context("dhcp: receiving on port 67"),
                        }
                    }
                }
            }
            self.save_and_send().await;
        }
    }

    /// Gives PXE boot information only to the MACs `gate` holds approved (`pxe_enrolled_only`).
    pub fn enrolled_only(&mut self, gate: std::sync::Arc<crate::broker::enrolment::Gate>) {
        log::info!("dhcp: PXE boot information only for enrolled MACs (pxe_enrolled_only)");
        self.server.pxe_allowed = Some(gate.approved());
        self.enrolments = Some(gate);
    }

    fn datagram(&mut self, data: &[u8], via: Via, peer: SocketAddr) {
        let SocketAddr::V4(peer) = peer else { return };
        let result = self.server.handle(data, via, peer, now());
        self.act(result, Origin::Datagram(data.len(), peer));
        for mac in std::mem::take(&mut self.server.held_back) {
            let Some(gate) = self.enrolments.clone() else { continue };
            tokio::spawn(async move {
                if let Err(e) = gate.seen(&mac, "DHCP (before its address)", now()).await {
                    log::error!("dhcp: recording {mac} as pending: {e}");
                }
            });
        }
    }

    /// Saves the lease table if a reply waits for it or its time has come, then sends the
    /// replies. A reply whose binding could not be saved is not sent: the client asks again.
    async fn save_and_send(&mut self) {
        let unsaved = self.server.leases.unsaved();
        let due = self.save_due.is_some_and(|t| t <= tokio::time::Instant::now());
        if unsaved == Unsaved::BeforeReply || (unsaved == Unsaved::Soon && due) {
            let saved = blocking(|| self.server.leases.save());
            if let Err(e) = saved {
                let held = self.outbox.iter().filter(|o| o.after_save).count();
                log::error!("dhcp: saving the lease table: {e}; {held} ACK(s) withheld");
                self.outbox.retain(|o| !o.after_save);
            }
        }
        self.save_due = match self.server.leases.unsaved() {
            Unsaved::Clean => None,
            // Kept if already set: a steady trickle of renewals must not put it off for ever.
            _ => Some(self.save_due.filter(|_| !due).unwrap_or_else(|| tokio::time::Instant::now() + self.save_every)),
        };
        for out in std::mem::take(&mut self.outbox) {
            let sock = match out.via {
                Via::Pxe => self.pxe.as_ref().unwrap_or(&self.dhcp),
                Via::Dhcp => &self.dhcp,
            };
            let r = &out.reply;
            log::info!(
                "dhcp: {:?} {} to {} via {} (boot file {})",
                r.msg_type,
                r.yiaddr,
                packet::hex(&r.chaddr),
                out.to,
                r.file.as_deref().unwrap_or("none")
            );
            match sock.send_to(&out.bytes, out.to).await {
                Ok(_) => self.report(&out),
                Err(e) => log::warn!("dhcp: sending {:?} to {}: {e}", r.msg_type, out.to),
            }
        }
    }

    /// Carries out what the core decided; replies go to the outbox. A ping that cannot be
    /// sent counts as unanswered.
    fn act(&mut self, result: Result<Action, Dropped>, origin: Origin) {
        let mut next = Some(result);
        while let Some(result) = next.take() {
            match result {
                Ok(Action::Reply(out)) => self.outbox.push(out),
                Ok(Action::Probe { ip, client }) => {
                    let sent = match &mut self.pinger {
                        Some(p) => p.start(ip),
                        None => Err(std::io::Error::other("no ICMP socket")),
                    };
                    match sent {
                        Ok(()) => log::debug!("dhcp: pinging {ip} before offering it to {client}"),
                        Err(e) => {
                            log::warn!("dhcp: ping check of {ip} for {client}: {e}; offering it unchecked");
                            next = Some(self.server.probe_done(ip, false, now()));
                        }
                    }
                }
                Ok(Action::Nothing) => {}
                Err(why) => log::log!(why.level(), "dhcp: {origin}: {why}"),
            }
        }
    }
}

/// Runs `f`, which blocks on the disk, without stalling the other tasks of the runtime's
/// worker when there are others to take them over.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What a decision answers, for the log.
enum Origin {
    Datagram(usize, SocketAddrV4),
    Ping(Ipv4Addr),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Datagram(len, peer) => write!(f, "dropped {len} bytes from {peer}"),
            Origin::Ping(ip) => write!(f, "after the ping check of {ip}"),
        }
    }
}

/// Feeds arbitrary bytes to the decision core, normal and proxyDHCP, on both ports, with an
/// in-memory lease table; the entry point of the `dhcp_packet` fuzz target. Any panic is a bug.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let ip = |n| Ipv4Addr::new(10, 0, 0, n);
    for proxy in [false, true] {
        let cfg = CoreConfig {
            address: ip(1),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            lease_time: 3600,
            quarantine: 600,
            router: Some(ip(1)),
            dns: vec![ip(1)],
            domain: Some("fuzz".into()),
            host_names: [("02:00:00:00:00:42".to_string(), "pc42".to_string())].into(),
            proxy,
            boot: BootChoice {
                bios: "undionly.kpxe".into(),
                uefi: "ipxe.efi".into(),
                other: Some("other.efi".into()),
                script_url: "http://10.0.0.1:8080/boot.ipxe".into(),
            },
            ping_check: true,
            limits: None,
        };
        let reservations = [("02:00:00:00:00:42".to_string(), ip(42))];
        let store = Box::new(lease::MemoryStore::default());
        let Ok(table) = LeaseTable::open((ip(100), ip(103)), vec![ip(1)], &reservations, store) else {
            return;
        };
        let mut server = Server::new(cfg, table);
        let peer = SocketAddrV4::new(ip(7), 68);
        for (via, now) in [(Via::Dhcp, 0), (Via::Pxe, 10), (Via::Dhcp, 5000)] {
            if let Ok(server::Action::Probe { ip, .. }) = server.handle(data, via, peer, now) {
                let _ = server.probe_done(ip, now % 2 == 0, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, ServeArgs};

    fn settings(toml: &str) -> Settings {
        let file = FileConfig::parse(toml).unwrap();
        let args = ServeArgs { boot_dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src").into()), ..Default::default() };
        let ifaces = [("br0".to_string(), Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(255, 255, 255, 0))];
        Settings::resolve_with(file, &args, &ifaces).unwrap()
    }

    #[test]
    fn config_keys_and_reservations() {
        let s = settings(
            "interface = \"br0\"\n[dhcp]\nlease_time = 600\nrouter = \"10.9.0.254\"\n\
             dns = [\"10.9.0.53\"]\nrouter_advertisement = false\n\
             [[dhcp.reservation]]\nmac = \"AA-BB-CC-DD-EE-01\"\naddress = \"10.9.0.42\"\n",
        );
        assert_eq!(s.dhcp.lease_time, 600);
        assert!(!s.dhcp.router_advertisement);
        assert_eq!(s.dhcp.bios_boot_file, "undionly.kpxe");
        let r = s.dhcp.checked_reservations(&s).unwrap();
        assert_eq!(r, vec![("aa:bb:cc:dd:ee:01".to_string(), Ipv4Addr::new(10, 9, 0, 42))]);
        let e = FileConfig::parse("[dhcp]\nleas_time = 1").unwrap_err();
        assert!(e.contains("leas_time"), "{e}");
    }

    #[test]
    fn ping_check_keys() {
        let s = settings("interface = \"br0\"\n");
        assert_eq!(s.dhcp.checked_ping_timeout().unwrap(), Some(Duration::from_millis(500)));
        let s = settings("interface = \"br0\"\n[dhcp]\nping_timeout_ms = 1000\n");
        assert_eq!(s.dhcp.checked_ping_timeout().unwrap(), Some(Duration::from_secs(1)));
        let s = settings("interface = \"br0\"\n[dhcp]\nping_check = false\nping_timeout_ms = 0\n");
        assert_eq!(s.dhcp.checked_ping_timeout().unwrap(), None);
        for bad in [0, 60000] {
            let s = settings(&format!("interface = \"br0\"\n[dhcp]\nping_timeout_ms = {bad}\n"));
            let e = s.dhcp.checked_ping_timeout().unwrap_err().to_string();
            assert!(e.contains("dhcp.ping_timeout_ms") && e.contains("ping_check = false"), "{e}");
        }
        let e = FileConfig::parse("[dhcp]\nping_timeout_ms = \"soon\"").unwrap_err();
        assert!(e.contains("ping_timeout_ms"), "{e}");
    }

    #[test]
    fn bad_reservations_name_the_key() {
        let base = "interface = \"br0\"\n[[dhcp.reservation]]\n";
        let s = settings(&format!("{base}mac = \"zz:bb:cc:dd:ee:01\"\naddress = \"10.9.0.42\"\n"));
        let e = s.dhcp.checked_reservations(&s).unwrap_err().to_string();
        assert!(e.contains("dhcp.reservation.mac"), "{e}");
        let s = settings(&format!("{base}mac = \"aa:bb:cc:dd:ee:01\"\naddress = \"10.8.0.42\"\n"));
        let e = s.dhcp.checked_reservations(&s).unwrap_err().to_string();
        assert!(e.contains("dhcp.reservation.address"), "{e}");
        let two = format!(
            "{base}mac = \"aa:bb:cc:dd:ee:01\"\naddress = \"10.9.0.42\"\n\
             [[dhcp.reservation]]\nmac = \"aa:bb:cc:dd:ee:02\"\naddress = \"10.9.0.42\"\n"
        );
        let s = settings(&two);
        assert!(s.dhcp.checked_reservations(&s).unwrap_err().to_string().contains("clashes"));
    }
}
