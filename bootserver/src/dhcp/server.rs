//! The decision function: a client's datagram, the lease table and the time in, a reply (with
//! where to send it), a ping check to run, or a reason for silence out. No I/O besides the
//! lease store.
//!
//! Ping check: before a DISCOVER is offered an address the client does not hold, the core asks
//! the caller to ping it ([`Action::Probe`]) and keeps the request; the caller reports the
//! outcome with [`Server::probe_done`], which offers the address or, if something answered,
//! quarantines it like a DECLINE and goes on to the next candidate.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use smoltcp::wire::DhcpMessageType as Msg;

use super::lease::{LeaseState, LeaseTable, Unsaved};
use super::packet::{opt, ParseError, Reply, Request, TooLarge};
use super::pxe::{add_boot_options, BootChoice, ClientKind};
use crate::ratelimit::{Bucket, PerKey, Rate};

/// How long an offered address is held for the client's REQUEST.
pub(crate) const OFFER_HOLD: u64 = 60;
pub(crate) const CLIENT_PORT: u16 = 68;
pub(crate) const SERVER_PORT: u16 = 67;
pub(crate) const PXE_PORT: u16 = 4011;
/// A ping check not reported after this many seconds no longer holds back the client's
/// DISCOVERs (the caller's timeout is far shorter; this only guards against a lost report).
const PROBE_STALE: u64 = 30;

/// Which socket a datagram came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Port 67.
    Dhcp,
    /// Port 4011, the PXE boot server port (proxyDHCP REQUESTs).
    Pxe,
}

/// What the decision function needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub lease_time: u32,
    pub quarantine: u32,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Host names of reserved clients (option 12), by MAC.
    pub host_names: std::collections::HashMap<String, String>,
    pub proxy: bool,
    pub boot: BootChoice,
    /// Ping an address before offering it to a client that does not hold it.
    pub ping_check: bool,
    /// Limits on the messages handled; none: every message is.
    pub limits: Option<Limits>,
}

/// How many messages are handled, per client and in all. Each costs a decision and maybe a
/// ping or a lease write, and a DISCOVER holds an address for a while; over the limits
/// messages are dropped, which a client takes like a lost datagram: it retransmits.
///
/// `total` is spent first come, first served. Clients the server already knows (a reservation
/// or a lease, bound now or before) have a second allowance of the same size once it is gone:
/// a flood from made-up MACs, which nothing can tell from new PCs, spends only the first one,
/// so the lab's PCs still boot through it. The known clients are at most the pool plus the
/// reservations, and each is held to its own `per_client` rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub per_client: Rate,
    pub total: Rate,
}

/// Client keys whose rates are tracked at once; see [`PerKey`].
const TRACKED_CLIENTS: usize = 4096;

struct Limiter {
    limits: Limits,
    clients: PerKey<String>,
    total: Bucket,
    /// The known clients' reserve; see [`Limits`].
    known: Bucket,
}

/// What the caller should do after a datagram or a ping outcome.
#[derive(Debug)]
pub(crate) enum Action {
    Reply(Outgoing),
    /// Ping `ip` and report with [`Server::probe_done`]; `client` (a MAC) is for the logs.
    Probe { ip: Ipv4Addr, client: String },
    /// Handled, nothing to send (RELEASE, DECLINE).
    Nothing,
}

/// A DISCOVER waiting for the ping check of the address it is to be offered.
struct Pending {
    ip: Ipv4Addr,
    req: Request,
    kind: ClientKind,
    since: u64,
}

/// A reply and its destination.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub reply: Reply,
    pub bytes: Vec<u8>,
    pub to: SocketAddrV4,
    /// Which socket sends it.
    pub via: Via,
    /// It acknowledges a binding that must be saved before it is sent.
    pub after_save: bool,
    /// Who asked, for the boot-stage reports.
    pub client: ClientKind,
}

/// Why a datagram gets no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Dropped {
    #[error("malformed: {0}")]
    Malformed(#[from] ParseError),
    #[error("{0}")]
    Ignored(String),
    #[error("no free address in the pool")]
    Exhausted,
    #[error("{0} is over its message rate")]
    ClientRate(String),
    #[error("over the service's message rate ({0})")]
    TotalRate(String),
    #[error("{0}")]
    TooLarge(#[from] TooLarge),
}

impl Dropped {
    /// Malformed input and server faults are worth a warning; the rest is routine.
    pub(crate) fn level(&self) -> log::Level {
        match self {
            // A flood is counted and reported as a whole by the caller, not line by line.
            Dropped::Ignored(_) | Dropped::ClientRate(_) | Dropped::TotalRate(_) => log::Level::Debug,
            _ => log::Level::Warn,
        }
    }
}

fn ignored(text: impl Into<String>) -> Dropped {
    Dropped::Ignored(text.into())
}

pub(crate) struct Server {
    pub cfg: CoreConfig,
    pub leases: LeaseTable,
    /// Ping checks under way, by client key.
    probes: HashMap<String, Pending>,
    limiter: Option<Limiter>,
    /// Messages dropped by the limits since the caller last took the count.
    pub rate_limited: u64,
    /// `pxe_enrolled_only`: the MACs that get boot information; None: every MAC does.
    pub pxe_allowed: Option<crate::broker::enrolment::Approved>,
    /// MACs whose PXE request was answered without boot information, each once, for the
    /// caller to record as pending.
    pub held_back: Vec<String>,
    held_seen: std::collections::HashSet<String>,
}

impl Server {
    pub(crate) fn new(cfg: CoreConfig, leases: LeaseTable) -> Server {
        let now = Instant::now();
        let limiter = cfg.limits.map(|limits| Limiter {
            limits,
            clients: PerKey::new(limits.per_client, TRACKED_CLIENTS),
            total: Bucket::new(limits.total, now),
            known: Bucket::new(limits.total, now),
        });
        Server {
            cfg,
            leases,
            probes: HashMap::new(),
            limiter,
            rate_limited: 0,
            pxe_allowed: None,
            held_back: Vec::new(),
            held_seen: Default::default(),
        }
    }

    /// Counts `req` against the limits.
    fn admit(&mut self, req: &Request, at: Instant) -> Result<(), Dropped> {
        let Some(l) = &mut self.limiter else { return Ok(()) };
        let key = req.client_key();
        // The client's own bucket first: a client that floods alone spends only its own.
        let r = match l.clients.take(&key, at) {
            Err(_) => Err(Dropped::ClientRate(req.mac_string())),
            Ok(()) if l.total.take(l.limits.total, at) => Ok(()),
            // Only under a flood: the lookup walks the leases.
            Ok(()) if self.leases.knows(&key, &req.mac_string()) && l.known.take(l.limits.total, at) => Ok(()),
            Ok(()) => Err(Dropped::TotalRate(req.mac_string())),
        };
        if r.is_err() {
            self.rate_limited += 1;
        }
        r
    }

    /// Under `pxe_enrolled_only` a PXE client whose MAC is not approved is answered as a plain
    /// client: an address, no boot information. It is not ignored: without an address its ROM
    /// would retry for minutes before the PC falls back to its next boot device.
    fn enrolled_kind(&mut self, req: &Request, kind: ClientKind) -> ClientKind {
        let Some(allowed) = &self.pxe_allowed else { return kind };
        let mac = req.mac_string();
        if !kind.is_pxe() || allowed.read().unwrap_or_else(|e| e.into_inner()).contains(&mac) {
            return kind;
        }
        if self.held_seen.len() < TRACKED_CLIENTS && self.held_seen.insert(mac.clone()) {
            log::info!(
                "dhcp: {mac}: PXE request from a MAC not enrolled: no boot information (pxe_enrolled_only); approve it with `bootserver client {mac} approve`"
            );
            self.held_back.push(mac);
        }
        ClientKind::Plain
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.cfg.netmask);
        u32::from(ip) & m == u32::from(self.cfg.address) & m
    }

    /// Decides what to do with one datagram from `peer` at `now`, in seconds since the epoch.
    pub(crate) fn handle(&mut self, data: &[u8], via: Via, peer: SocketAddrV4, now: u64) -> Result<Action, Dropped> {
        self.handle_at(data, via, peer, now, Instant::now())
    }

    /// [`Server::handle`] with the instant the rate limits count from.
    pub(crate) fn handle_at(
        &mut self,
        data: &[u8],
        via: Via,
        peer: SocketAddrV4,
        now: u64,
        at: Instant,
    ) -> Result<Action, Dropped> {
        let req = Request::parse(data)?;
        self.admit(&req, at)?;
        let kind = self.enrolled_kind(&req, ClientKind::of(&req));
        if self.cfg.proxy {
            return self.proxy(&req, kind, via, peer).map(Action::Reply);
        }
        if via == Via::Pxe {
            return Err(ignored("port 4011 is only served in proxyDHCP mode"));
        }
        if !req.giaddr.is_unspecified() && !self.in_subnet(req.giaddr) {
            return Err(ignored(format!("relayed from {}, a subnet this server has no pool for", req.giaddr)));
        }
        match req.msg_type {
            Msg::Discover => self.discover(&req, kind, now),
            Msg::Request => self.request(&req, kind, now).map(Action::Reply),
            Msg::Decline => self.decline(&req, now).map(|()| Action::Nothing),
            Msg::Release => self.release(&req, now).map(|()| Action::Nothing),
            Msg::Inform => self.inform(&req, kind).map(Action::Reply),
            other => Err(ignored(format!("{other:?} is not a client message"))),
        }
    }

    fn base_reply(&self, req: &Request, msg: Msg, kind: ClientKind) -> Reply {
        let mut r = Reply::new(req, msg);
        if kind.is_pxe() {
            r.siaddr = self.cfg.address;
        }
        r.add(opt::SERVER_ID, self.cfg.address.octets());
        r
    }

    fn network_options(&self, r: &mut Reply, req: &Request) {
        let c = &self.cfg;
        if let Some(name) = c.host_names.get(&req.mac_string()) {
            r.add(opt::HOST_NAME, name.as_bytes());
        }
        r.add(opt::SUBNET_MASK, c.netmask.octets());
        let bcast = u32::from(c.address) | !u32::from(c.netmask);
        r.add(opt::BROADCAST, Ipv4Addr::from(bcast).octets());
        if let Some(gw) = c.router {
            r.add(opt::ROUTER, gw.octets());
        }
        if !c.dns.is_empty() {
            r.add(opt::DNS, c.dns.iter().flat_map(|a| a.octets()).collect::<Vec<u8>>());
        }
        if let Some(d) = &c.domain {
            r.add(opt::DOMAIN_NAME, d.as_bytes());
        }
    }

    fn lease_options(&self, r: &mut Reply) {
        let t = self.cfg.lease_time;
        r.add(opt::LEASE_TIME, t.to_be_bytes());
        // RFC 2131 4.4.5's defaults: renew at half, rebind at 7/8 of the lease.
        r.add(opt::RENEWAL_TIME, (t / 2).to_be_bytes());
        r.add(opt::REBINDING_TIME, ((t as u64 * 7 / 8) as u32).to_be_bytes());
    }

    fn boot_options(&self, r: &mut Reply, req: &Request, kind: ClientKind) {
        let peer = req.mac_string();
        let file = self.cfg.boot.file_for(kind, &peer);
        let name = self.cfg.address.to_string();
        add_boot_options(r, req, kind, file.as_deref(), &name, !self.cfg.proxy);
    }

    /// RFC 2131 4.1: relay agent, then NAK broadcast, then the client's own address, then
    /// broadcast. A client without an address and without the broadcast flag should get a
    /// unicast to yiaddr and chaddr, which needs an ARP entry this server cannot make through
    /// a UDP socket; RFC 2131 4.1 allows broadcasting instead.
    fn destination(&self, req: &Request, reply: &mut Reply) -> SocketAddrV4 {
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
        if !req.giaddr.is_unspecified() {
            if reply.msg_type == Msg::Nak {
                reply.broadcast = true;
            }
            SocketAddrV4::new(req.giaddr, SERVER_PORT)
        } else if reply.msg_type == Msg::Nak || req.ciaddr.is_unspecified() {
            bcast
        } else {
            SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
        }
    }

    fn send(&self, req: &Request, mut reply: Reply, via: Via, peer: SocketAddrV4) -> Result<Outgoing, Dropped> {
        let to = match via {
            Via::Pxe => peer,
            Via::Dhcp => self.destination(req, &mut reply),
        };
        let bytes = reply.emit(req.max_message_size)?;
        Ok(Outgoing { reply, bytes, to, via, after_save: false, client: ClientKind::of(req) })
    }

    fn discover(&mut self, req: &Request, kind: ClientKind, now: u64) -> Result<Action, Dropped> {
        let (key, mac) = (req.client_key(), req.mac_string());
        if let Some(p) = self.probes.get_mut(&key) {
            if now < p.since + PROBE_STALE {
                // A retransmission: the offer, when it comes, answers the latest one.
                p.req = req.clone();
                p.kind = kind;
                return Err(ignored(format!("{mac} repeats its DISCOVER while {} is being pinged", p.ip)));
            }
            let ip = p.ip;
            self.probes.remove(&key);
            self.leases.set_probing(ip, false);
        }
        let ip = self.leases.pick(&key, &mac, req.requested_ip, now).ok_or(Dropped::Exhausted)?;
        self.offer_or_probe(req, kind, ip, now)
    }

    fn offer_or_probe(&mut self, req: &Request, kind: ClientKind, ip: Ipv4Addr, now: u64) -> Result<Action, Dropped> {
        let key = req.client_key();
        if !self.cfg.ping_check || !self.leases.needs_probe(ip, &key, now) {
            return self.offer(req, kind, ip, now).map(Action::Reply);
        }
        self.leases.set_probing(ip, true);
        self.probes.insert(key, Pending { ip, req: req.clone(), kind, since: now });
        Ok(Action::Probe { ip, client: req.mac_string() })
    }

    /// The outcome of the ping check of `ip`: `answered` if an echo reply came back in time.
    pub(crate) fn probe_done(&mut self, ip: Ipv4Addr, answered: bool, now: u64) -> Result<Action, Dropped> {
        let key = self.probes.iter().find(|(_, p)| p.ip == ip).map(|(k, _)| k.clone());
        let Some((key, p)) = key.and_then(|k| self.probes.remove_entry(&k)) else {
            return Err(ignored(format!("no ping check of {ip} is under way")));
        };
        self.leases.set_probing(ip, false);
        if !answered {
            return self.offer(&p.req, p.kind, ip, now).map(Action::Reply);
        }
        let mac = p.req.mac_string();
        self.leases.decline(ip, now + u64::from(self.cfg.quarantine));
        log::warn!(
            "dhcp: conflict: {ip} answers ping, another host uses it; not offered to {mac}, \
             quarantined for {} s",
            self.cfg.quarantine
        );
        let next = self.leases.pick(&key, &mac, p.req.requested_ip, now).ok_or(Dropped::Exhausted)?;
        self.offer_or_probe(&p.req, p.kind, next, now)
    }

    fn offer(&mut self, req: &Request, kind: ClientKind, ip: Ipv4Addr, now: u64) -> Result<Outgoing, Dropped> {
        let (key, mac) = (req.client_key(), req.mac_string());
        self.leases.offer(ip, &key, &mac, now + OFFER_HOLD);
        let mut r = self.base_reply(req, Msg::Offer, kind);
        r.yiaddr = ip;
        self.lease_options(&mut r);
        self.network_options(&mut r, req);
        self.boot_options(&mut r, req, kind);
        self.send(req, r, Via::Dhcp, unspecified())
    }

    fn nak(&self, req: &Request, why: String) -> Result<Outgoing, Dropped> {
        log::info!("dhcp: NAK to {}: {why}", req.mac_string());
        let mut r = Reply::new(req, Msg::Nak);
        r.add(opt::SERVER_ID, self.cfg.address.octets());
        r.add(opt::MESSAGE, why.into_bytes());
        self.send(req, r, Via::Dhcp, unspecified())
    }

    fn ack(&mut self, req: &Request, kind: ClientKind, ip: Ipv4Addr, now: u64) -> Result<Outgoing, Dropped> {
        let (key, mac) = (req.client_key(), req.mac_string());
        let until = now + u64::from(self.cfg.lease_time);
        let unsaved = self.leases.bind(ip, &key, &mac, req.host_name.clone(), until);
        log::info!("dhcp: {ip} bound to {mac} for {} s", self.cfg.lease_time);
        let mut r = self.base_reply(req, Msg::Ack, kind);
        r.ciaddr = req.ciaddr;
        r.yiaddr = ip;
        self.lease_options(&mut r);
        self.network_options(&mut r, req);
        self.boot_options(&mut r, req, kind);
        let mut out = self.send(req, r, Via::Dhcp, unspecified())?;
        out.after_save = unsaved == Unsaved::BeforeReply;
        Ok(out)
    }

    fn request(&mut self, req: &Request, kind: ClientKind, now: u64) -> Result<Outgoing, Dropped> {
        let (key, mac) = (req.client_key(), req.mac_string());
        match req.server_id {
            // SELECTING, another server's offer won: release what we held.
            Some(sid) if sid != self.cfg.address => {
                let freed = self.leases.forget_offer(&key);
                Err(ignored(format!("{mac} chose server {sid}; our offer {freed:?} is withdrawn")))
            }
            // SELECTING, our offer: only an address we offered to this client, or one it
            // holds already (a retransmitted REQUEST whose ACK was lost), is bound. Anything
            // else would let a forged REQUEST bind any free address without an OFFER.
            Some(_) => {
                let ip = req
                    .requested_ip
                    .or(Some(req.ciaddr).filter(|a| !a.is_unspecified()))
                    .ok_or_else(|| ignored("REQUEST names our server id but no address"))?;
                let bound = self.leases.held_by(ip, &key).is_some_and(|l| l.state == LeaseState::Bound);
                let ours = bound || self.leases.offered_to(ip, &key);
                if !ours {
                    self.nak(req, format!("{ip} was not offered to this client"))
                } else if self.leases.available_to(ip, &key, &mac, now) {
                    self.ack(req, kind, ip, now)
                } else {
                    self.nak(req, format!("{ip} is not available"))
                }
            }
            // INIT-REBOOT: a client that remembers an address.
            None if req.ciaddr.is_unspecified() => {
                let ip = req
                    .requested_ip
                    .ok_or_else(|| ignored("REQUEST without server id, ciaddr or requested address"))?;
                if !self.in_subnet(ip) {
                    return self.nak(req, format!("{ip} is on the wrong network"));
                }
                if let Some(res) = self.leases.reservation(&mac).filter(|r| *r != ip) {
                    return self.nak(req, format!("{mac} has the reserved address {res}"));
                }
                self.confirm(req, kind, ip, now)
            }
            // RENEWING (unicast) or REBINDING (broadcast): ciaddr is the lease.
            None => self.confirm(req, kind, req.ciaddr, now),
        }
    }

    /// A client asserting it holds `ip`: extend what we know, refuse what belongs to another,
    /// stay silent about what we have no record of (RFC 2131 4.3.2).
    fn confirm(&mut self, req: &Request, kind: ClientKind, ip: Ipv4Addr, now: u64) -> Result<Outgoing, Dropped> {
        let (key, mac) = (req.client_key(), req.mac_string());
        let available = self.leases.available_to(ip, &key, &mac, now);
        if !available {
            return self.nak(req, format!("{ip} is not available to this client"));
        }
        let known = self.leases.held_by(ip, &key).is_some() || self.leases.reservation(&mac) == Some(ip);
        if known {
            self.ack(req, kind, ip, now)
        } else {
            Err(ignored(format!("{mac} asks for {ip}, which this server has no record of")))
        }
    }

    fn ours(&self, req: &Request) -> Result<(), Dropped> {
        match req.server_id {
            Some(sid) if sid != self.cfg.address => Err(ignored(format!("addressed to server {sid}"))),
            _ => Ok(()),
        }
    }

    fn decline(&mut self, req: &Request, now: u64) -> Result<(), Dropped> {
        self.ours(req)?;
        let key = req.client_key();
        let ip = req.requested_ip.ok_or_else(|| ignored("DECLINE without requested address"))?;
        if self.leases.held_by(ip, &key).is_none() {
            return Err(ignored(format!("DECLINE of {ip}, which the client does not hold")));
        }
        self.leases.decline(ip, now + u64::from(self.cfg.quarantine));
        log::warn!(
            "dhcp: {} declined {ip}: another host uses it; quarantined for {} s",
            req.mac_string(),
            self.cfg.quarantine
        );
        Ok(())
    }

    fn release(&mut self, req: &Request, now: u64) -> Result<(), Dropped> {
        self.ours(req)?;
        if self.leases.release(req.ciaddr, &req.client_key(), now) {
            log::info!("dhcp: {} released {}", req.mac_string(), req.ciaddr);
            Ok(())
        } else {
            Err(ignored(format!("RELEASE of {}, which the client does not hold", req.ciaddr)))
        }
    }

    fn inform(&self, req: &Request, kind: ClientKind) -> Result<Outgoing, Dropped> {
        if req.ciaddr.is_unspecified() {
            return Err(ignored("INFORM without ciaddr"));
        }
        let mut r = self.base_reply(req, Msg::Ack, kind);
        r.ciaddr = req.ciaddr;
        self.network_options(&mut r, req);
        self.boot_options(&mut r, req, kind);
        self.send(req, r, Via::Dhcp, unspecified())
    }

    /// proxyDHCP (PXE spec 2.2.2, RFC 4578): boot information only, to PXE clients only.
    fn proxy(&mut self, req: &Request, kind: ClientKind, via: Via, peer: SocketAddrV4) -> Result<Outgoing, Dropped> {
        if !kind.is_pxe() {
            return Err(ignored("not a PXE client; proxyDHCP answers PXE clients only"));
        }
        let msg = match (via, req.msg_type) {
            (Via::Dhcp, Msg::Discover) => Msg::Offer,
            (Via::Pxe, Msg::Request | Msg::Inform) => Msg::Ack,
            (_, t) => return Err(ignored(format!("proxyDHCP ignores {t:?} on {via:?}"))),
        };
        let mut r = self.base_reply(req, msg, kind);
        r.ciaddr = req.ciaddr;
        self.boot_options(&mut r, req, kind);
        if r.file.is_none() {
            return Err(ignored("no boot file for this client"));
        }
        self.send(req, r, via, peer)
    }
}

fn unspecified() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::lease::{LeaseState, MemoryStore};
    use crate::dhcp::packet::tests::client_msg;
    use smoltcp::wire::DhcpPacket;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const RESERVED_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x42];
    const PXE_BIOS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn cfg(proxy: bool) -> CoreConfig {
        CoreConfig {
            address: SERVER,
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            lease_time: 3600,
            quarantine: 600,
            router: Some(ip(254)),
            dns: vec![ip(53), ip(54)],
            domain: Some("lab.test".into()),
            host_names: [("02:00:00:00:00:42".to_string(), "pc42".to_string())].into(),
            proxy,
            boot: BootChoice {
                bios: "undionly.kpxe".into(),
                uefi: "ipxe.efi".into(),
                other: None,
                script_url: "http://10.0.0.1:8080/boot.ipxe".into(),
            },
            // The tests below that are not about the ping check answer at once.
            ping_check: false,
            limits: None,
        }
    }

    fn server_with(store: MemoryStore, proxy: bool) -> Server {
        let res = vec![("02:00:00:00:00:42".to_string(), ip(42))];
        let t = LeaseTable::open((ip(100), ip(101)), vec![SERVER], &res, Box::new(store)).unwrap();
        Server::new(cfg(proxy), t)
    }

    fn server() -> Server {
        server_with(MemoryStore::default(), false)
    }

    fn peer() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
    }

    fn msg(t: u8, mac: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        client_msg(t, mac, options)
    }

    fn with_ciaddr(mut b: Vec<u8>, a: Ipv4Addr) -> Vec<u8> {
        b[12..16].copy_from_slice(&a.octets());
        b
    }

    fn go(s: &mut Server, b: &[u8], now: u64) -> Outgoing {
        reply(s.handle(b, Via::Dhcp, peer(), now))
    }

    fn reply(a: Result<Action, Dropped>) -> Outgoing {
        match a {
            Ok(Action::Reply(o)) => o,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn silent(s: &mut Server, b: &[u8], now: u64) -> String {
        match s.handle(b, Via::Dhcp, peer(), now) {
            Err(e) => e.to_string(),
            Ok(Action::Nothing) => String::new(),
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }

    fn sid() -> [u8; 4] {
        SERVER.octets()
    }

    /// DISCOVER, OFFER, REQUEST, ACK; returns the address.
    fn lease(s: &mut Server, mac: [u8; 6], now: u64) -> Ipv4Addr {
        let offer = go(s, &msg(1, mac, &[]), now);
        assert_eq!(offer.reply.msg_type, Msg::Offer);
        let ip = offer.reply.yiaddr;
        let ack = go(s, &msg(3, mac, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &ip.octets())]), now);
        assert_eq!(ack.reply.msg_type, Msg::Ack);
        assert_eq!(ack.reply.yiaddr, ip);
        ip
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut s = server();
        let offer = go(&mut s, &msg(1, MAC, &[]), 0);
        let r = &offer.reply;
        assert_eq!((r.msg_type, r.yiaddr), (Msg::Offer, ip(100)));
        assert_eq!(offer.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!(r.option(opt::SERVER_ID), Some(&sid()[..]));
        assert_eq!(r.option(opt::SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
        assert_eq!(r.option(opt::ROUTER), Some(&[10, 0, 0, 254][..]));
        assert_eq!(r.option(opt::DNS), Some(&[10, 0, 0, 53, 10, 0, 0, 54][..]));
        assert_eq!(r.option(opt::DOMAIN_NAME), Some(&b"lab.test"[..]));
        assert_eq!(r.option(opt::LEASE_TIME), Some(&3600u32.to_be_bytes()[..]));
        assert_eq!(r.option(opt::RENEWAL_TIME), Some(&1800u32.to_be_bytes()[..]));
        assert_eq!(r.option(opt::REBINDING_TIME), Some(&3150u32.to_be_bytes()[..]));
        // A plain client gets no boot information.
        assert_eq!((r.file.as_deref(), r.option(opt::VENDOR_CLASS)), (None, None));
        // The bytes are what smoltcp reads.
        let p = DhcpPacket::new_checked(&offer.bytes[..]).unwrap();
        assert_eq!(p.your_ip(), ip(100));
        assert_eq!(p.transaction_id(), 0x1234_5678);
        assert_eq!(lease(&mut s, MAC, 1), ip(100));
        assert_eq!(s.leases.get(ip(100)).unwrap().state, LeaseState::Bound);
        // A second client gets another address.
        assert_eq!(lease(&mut s, MAC2, 2), ip(101));
        // Pool exhausted.
        assert!(matches!(s.handle(&msg(1, [2, 0, 0, 0, 0, 3], &[]), Via::Dhcp, peer(), 3), Err(Dropped::Exhausted)));
    }

    #[test]
    fn client_identifier_is_the_key() {
        let mut s = server();
        let id: &[u8] = &[0xff, 1, 2, 3, 4];
        let o = go(&mut s, &msg(1, MAC, &[(opt::CLIENT_ID, id)]), 0);
        go(&mut s, &msg(3, MAC, &[(opt::CLIENT_ID, id), (opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &o.reply.yiaddr.octets())]), 0);
        assert_eq!(s.leases.get(ip(100)).unwrap().client, "id:ff:01:02:03:04");
        // Same hardware, no identifier: another client.
        assert_eq!(go(&mut s, &msg(1, MAC, &[]), 1).reply.yiaddr, ip(101));
    }

    #[test]
    fn selecting_another_server_forgets_the_offer() {
        let mut s = server();
        assert_eq!(go(&mut s, &msg(1, MAC, &[]), 0).reply.yiaddr, ip(100));
        let why = silent(&mut s, &msg(3, MAC, &[(opt::SERVER_ID, &[10, 0, 0, 9]), (opt::REQUESTED_IP, &[10, 0, 0, 200])]), 1);
        assert!(why.contains("chose server 10.0.0.9"), "{why}");
        assert_eq!(s.leases.get(ip(100)).unwrap().state, LeaseState::Free);
        // Another client may now have it.
        assert_eq!(go(&mut s, &msg(1, MAC2, &[(opt::REQUESTED_IP, &[10, 0, 0, 100])]), 2).reply.yiaddr, ip(100));
    }

    #[test]
    fn selecting_an_address_taken_meanwhile_is_refused() {
        let mut s = server();
        lease(&mut s, MAC, 0);
        let nak = go(&mut s, &msg(3, MAC2, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &[10, 0, 0, 100])]), 1);
        assert_eq!(nak.reply.msg_type, Msg::Nak);
        assert_eq!(nak.reply.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    }

    #[test]
    fn request_naming_us_binds_only_what_we_offered() {
        let mut s = server();
        let select = |ip: u8| msg(3, MAC, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &[10, 0, 0, ip])]);
        // No OFFER before it: NAK, and nothing is bound.
        let nak = go(&mut s, &select(101), 0);
        assert_eq!(nak.reply.msg_type, Msg::Nak);
        assert_eq!(nak.reply.option(opt::MESSAGE), Some(&b"10.0.0.101 was not offered to this client"[..]));
        assert!(s.leases.get(ip(101)).is_none());
        // Offered .100: a REQUEST for .101 is still refused, and the offer stands.
        assert_eq!(go(&mut s, &msg(1, MAC, &[]), 1).reply.yiaddr, ip(100));
        assert_eq!(go(&mut s, &select(101), 1).reply.msg_type, Msg::Nak);
        // The offered address: ACK, to be sent only once the binding is saved.
        let ack = go(&mut s, &select(100), 2);
        assert_eq!((ack.reply.msg_type, ack.reply.yiaddr, ack.after_save), (Msg::Ack, ip(100), true));
        // The same REQUEST again (its ACK was lost): the client holds it, so ACK, and this
        // time the binding only changes its end, which need not wait for the disk.
        let again = go(&mut s, &select(100), 3);
        assert_eq!((again.reply.msg_type, again.after_save), (Msg::Ack, false));
        // Another client naming us for it: NAK, whatever it claims.
        let other = msg(3, MAC2, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &[10, 0, 0, 100])]);
        assert_eq!(go(&mut s, &other, 3).reply.msg_type, Msg::Nak);
        // Once a lapsed hold is swept, the address is free: the offer no longer counts.
        assert_eq!(go(&mut s, &msg(1, MAC2, &[]), 4).reply.yiaddr, ip(101));
        s.leases.expire(4 + OFFER_HOLD);
        let late = msg(3, MAC2, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &[10, 0, 0, 101])]);
        assert_eq!(go(&mut s, &late, 4 + OFFER_HOLD + 1).reply.msg_type, Msg::Nak, "expired offers are freed");
    }

    #[test]
    fn messages_are_rate_limited_per_client_and_in_all() {
        let mut c = cfg(false);
        let second = std::time::Duration::from_secs(1);
        c.limits = Some(Limits { per_client: Rate::per_sec(1, 3), total: Rate::per_sec(2, 5) });
        let res = vec![("02:00:00:00:00:42".to_string(), ip(42))];
        let t = LeaseTable::open((ip(100), ip(101)), vec![SERVER], &res, Box::new(MemoryStore::default()));
        let mut s = Server::new(c, t.unwrap());
        let t0 = Instant::now();
        let send = |s: &mut Server, mac: [u8; 6], at: Instant| s.handle_at(&msg(1, mac, &[]), Via::Dhcp, peer(), 0, at);
        for _ in 0..3 {
            assert!(send(&mut s, MAC, t0).is_ok());
        }
        assert!(matches!(send(&mut s, MAC, t0), Err(Dropped::ClientRate(m)) if m == "02:00:00:00:00:01"));
        // Other clients have their own allowance, until the service's is spent.
        assert!(send(&mut s, MAC2, t0).is_ok());
        assert!(send(&mut s, [2, 0, 0, 0, 0, 3], t0).is_ok());
        assert!(matches!(send(&mut s, [2, 0, 0, 0, 0, 4], t0), Err(Dropped::TotalRate(_))));
        assert_eq!(s.rate_limited, 2);
        // A client the server knows (here by its reservation) still gets through, from a reserve
        // of the same size that unknown clients never reach.
        let known = [2, 0, 0, 0, 0, 0x42];
        assert!(send(&mut s, known, t0).is_ok());
        assert!(matches!(send(&mut s, [2, 0, 0, 0, 0, 6], t0), Err(Dropped::TotalRate(_))));
        assert_eq!(s.rate_limited, 3);
        assert_eq!(Dropped::TotalRate(String::new()).level(), log::Level::Debug);
        // A second later the flooding client gets one more, the service two.
        assert!(send(&mut s, MAC, t0 + second).is_ok());
        assert!(matches!(send(&mut s, MAC, t0 + second), Err(Dropped::ClientRate(_))));
        assert!(send(&mut s, [2, 0, 0, 0, 0, 4], t0 + second).is_ok());
        assert!(matches!(send(&mut s, [2, 0, 0, 0, 0, 5], t0 + second), Err(Dropped::TotalRate(_))));
        // Malformed datagrams have no client to count against; they are dropped before.
        assert!(matches!(s.handle_at(&[0u8; 10], Via::Dhcp, peer(), 0, t0), Err(Dropped::Malformed(_))));
    }

    #[test]
    fn init_reboot() {
        let mut s = server();
        let a = lease(&mut s, MAC, 0);
        // Knows it: ACK.
        let r = go(&mut s, &msg(3, MAC, &[(opt::REQUESTED_IP, &a.octets())]), 10);
        assert_eq!((r.reply.msg_type, r.reply.yiaddr), (Msg::Ack, a));
        // Wrong subnet: NAK.
        let r = go(&mut s, &msg(3, MAC, &[(opt::REQUESTED_IP, &[192, 168, 1, 5])]), 10);
        assert_eq!(r.reply.msg_type, Msg::Nak);
        // Leased to another: NAK.
        let r = go(&mut s, &msg(3, MAC2, &[(opt::REQUESTED_IP, &a.octets())]), 10);
        assert_eq!(r.reply.msg_type, Msg::Nak);
        // A free address we have no record for this client: silence.
        let why = silent(&mut s, &msg(3, MAC2, &[(opt::REQUESTED_IP, &[10, 0, 0, 101])]), 10);
        assert!(why.contains("no record"), "{why}");
        // A reserved client asking for something else: NAK.
        let r = go(&mut s, &msg(3, RESERVED_MAC, &[(opt::REQUESTED_IP, &[10, 0, 0, 101])]), 10);
        assert_eq!(r.reply.msg_type, Msg::Nak);
    }

    #[test]
    fn renewing_and_rebinding() {
        let mut s = server();
        let a = lease(&mut s, MAC, 0);
        let renew = with_ciaddr(msg(3, MAC, &[]), a);
        let r = go(&mut s, &renew, 1800);
        assert_eq!((r.reply.msg_type, r.reply.yiaddr, r.reply.ciaddr), (Msg::Ack, a, a));
        // Unicast to the client's address, and the lease is extended.
        assert_eq!(r.to, SocketAddrV4::new(a, 68));
        assert_eq!(s.leases.get(a).unwrap().expires, 1800 + 3600);
        // Rebinding: broadcast flag, same answer to ciaddr.
        let mut rebind = renew.clone();
        rebind[10] = 0x80;
        assert_eq!(go(&mut s, &rebind, 4000).reply.msg_type, Msg::Ack);
        // Someone else's address: NAK.
        let r = go(&mut s, &with_ciaddr(msg(3, MAC2, &[]), a), 4000);
        assert_eq!(r.reply.msg_type, Msg::Nak);
    }

    #[test]
    fn release_then_request_again() {
        let mut s = server();
        let a = lease(&mut s, MAC, 0);
        assert_eq!(silent(&mut s, &with_ciaddr(msg(7, MAC, &[(opt::SERVER_ID, &sid())]), a), 5), "");
        assert_eq!(s.leases.get(a).unwrap().state, LeaseState::Free);
        // A release from someone else is ignored.
        lease(&mut s, MAC, 6);
        let why = silent(&mut s, &with_ciaddr(msg(7, MAC2, &[]), a), 7);
        assert!(why.contains("does not hold"), "{why}");
        assert_eq!(s.leases.get(a).unwrap().state, LeaseState::Bound);
        assert_eq!(lease(&mut s, MAC, 8), a);
    }

    #[test]
    fn decline_gives_another_address() {
        let mut s = server();
        let a = lease(&mut s, MAC, 0);
        assert_eq!(silent(&mut s, &msg(4, MAC, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &a.octets())]), 1), "");
        assert_eq!(s.leases.get(a).unwrap().state, LeaseState::Declined);
        let b = lease(&mut s, MAC, 2);
        assert_ne!(a, b);
        // Back in the pool after the quarantine.
        assert_eq!(lease(&mut s, MAC2, 601), a);
    }

    #[test]
    fn inform_gets_configuration_without_lease() {
        let mut s = server();
        let r = go(&mut s, &with_ciaddr(msg(8, MAC, &[]), ip(7)), 0);
        assert_eq!((r.reply.msg_type, r.reply.yiaddr, r.reply.ciaddr), (Msg::Ack, Ipv4Addr::UNSPECIFIED, ip(7)));
        assert_eq!(r.reply.option(opt::LEASE_TIME), None);
        assert!(r.reply.option(opt::ROUTER).is_some());
        assert_eq!(r.to, SocketAddrV4::new(ip(7), 68));
    }

    #[test]
    fn destinations() {
        let mut s = server();
        let mut b = msg(1, MAC, &[]);
        b[24..28].copy_from_slice(&[10, 0, 0, 2]); // giaddr
        assert_eq!(go(&mut s, &b, 0).to, SocketAddrV4::new(ip(2), 67));
        b[24..28].copy_from_slice(&[192, 168, 9, 1]);
        assert!(silent(&mut s, &b, 0).contains("no pool"));
        let mut b = msg(1, MAC, &[]);
        b[10] = 0x80;
        let o = go(&mut s, &b, 0);
        assert!(o.reply.broadcast);
        assert_eq!(o.to.ip(), &Ipv4Addr::BROADCAST);
        // Server messages and port 4011 outside proxy mode are ignored.
        assert!(silent(&mut s, &msg(2, MAC, &[]), 0).contains("not a client message"));
        assert!(matches!(s.handle(&msg(1, MAC, &[]), Via::Pxe, peer(), 0), Err(Dropped::Ignored(_))));
    }

    #[test]
    fn reservation_is_honoured() {
        let mut s = server();
        assert_eq!(lease(&mut s, RESERVED_MAC, 0), ip(42));
        let o = go(&mut s, &msg(1, RESERVED_MAC, &[]), 1);
        assert_eq!(o.reply.option(opt::HOST_NAME), Some(&b"pc42"[..]));
        let r = go(&mut s, &msg(1, MAC, &[(opt::REQUESTED_IP, &[10, 0, 0, 42])]), 0);
        assert_eq!(r.reply.yiaddr, ip(100));
    }

    #[test]
    fn expiry_and_restart_from_persisted_state() {
        let store = MemoryStore::default();
        let mut s = server_with(store.clone(), false);
        let a = lease(&mut s, MAC, 0);
        drop(s);
        let mut s = server_with(store.clone(), false);
        // After a restart the same client gets its address, another client another one.
        assert_eq!(go(&mut s, &msg(1, MAC2, &[(opt::REQUESTED_IP, &a.octets())]), 10).reply.yiaddr, ip(101));
        assert_eq!(go(&mut s, &msg(3, MAC, &[(opt::REQUESTED_IP, &a.octets())]), 10).reply.msg_type, Msg::Ack);
        // Once the lease ran out (and MAC2's offer lapsed) the address goes to whoever asks.
        s.leases.expire(10 + 3600);
        s.leases.save().unwrap();
        assert_eq!(store.saved.lock().unwrap()[0].state, LeaseState::Free);
        let o = go(&mut s, &msg(1, MAC2, &[(opt::REQUESTED_IP, &a.octets())]), 10 + 3600);
        assert_eq!(o.reply.yiaddr, ip(101), "MAC2 prefers its own previous offer");
    }

    fn probing_server() -> Server {
        let mut s = server();
        s.cfg.ping_check = true;
        s
    }

    fn probe(a: Result<Action, Dropped>) -> Ipv4Addr {
        match a {
            Ok(Action::Probe { ip, client }) => {
                assert_eq!(client.len(), 17, "a MAC: {client}");
                ip
            }
            other => panic!("expected a ping check, got {other:?}"),
        }
    }

    fn discover(s: &mut Server, mac: [u8; 6], now: u64) -> Result<Action, Dropped> {
        s.handle(&msg(1, mac, &[]), Via::Dhcp, peer(), now)
    }

    /// DISCOVER, ping check of `expect` with no answer, OFFER, REQUEST, ACK.
    fn lease_probed(s: &mut Server, mac: [u8; 6], expect: Ipv4Addr, now: u64) {
        assert_eq!(probe(discover(s, mac, now)), expect);
        assert_eq!(reply(s.probe_done(expect, false, now)).reply.yiaddr, expect);
        let ack = go(s, &msg(3, mac, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &expect.octets())]), now);
        assert_eq!((ack.reply.msg_type, ack.reply.yiaddr), (Msg::Ack, expect));
    }

    #[test]
    fn ping_check_silent_address_is_offered_once_probed() {
        let mut s = probing_server();
        assert_eq!(probe(discover(&mut s, MAC, 0)), ip(100));
        // A retransmission (new xid) starts no second ping check...
        let mut again = msg(1, MAC, &[]);
        again[4..8].copy_from_slice(&0xabcd_0001u32.to_be_bytes());
        assert!(silent(&mut s, &again, 1).contains("being pinged"));
        // ...and meanwhile another client is served, with another address.
        assert_eq!(probe(discover(&mut s, MAC2, 1)), ip(101));
        // No answer: the OFFER goes out, for the latest DISCOVER.
        let o = reply(s.probe_done(ip(100), false, 1));
        assert_eq!((o.reply.msg_type, o.reply.yiaddr, o.reply.chaddr), (Msg::Offer, ip(100), MAC));
        let p = DhcpPacket::new_checked(&o.bytes[..]).unwrap();
        assert_eq!(p.transaction_id(), 0xabcd_0001);
        assert_eq!(s.leases.get(ip(100)).unwrap().state, LeaseState::Offered);
        // A DISCOVER repeated after the OFFER gets it again at once: the client holds it.
        assert_eq!(go(&mut s, &msg(1, MAC, &[]), 2).reply.yiaddr, ip(100));
        // An outcome nobody waits for is ignored.
        assert!(matches!(s.probe_done(ip(100), true, 2), Err(Dropped::Ignored(_))));
        assert_eq!(s.leases.get(ip(100)).unwrap().state, LeaseState::Offered);
    }

    #[test]
    fn ping_check_answered_address_is_quarantined_and_the_next_probed() {
        let mut s = probing_server();
        assert_eq!(probe(discover(&mut s, MAC, 0)), ip(100));
        // While under the check nobody may take it.
        let nak = go(&mut s, &msg(3, MAC2, &[(opt::SERVER_ID, &sid()), (opt::REQUESTED_IP, &[10, 0, 0, 100])]), 0);
        assert_eq!(nak.reply.msg_type, Msg::Nak);
        // It answers: quarantined like a DECLINE, and the next candidate is checked.
        assert_eq!(probe(s.probe_done(ip(100), true, 1)), ip(101));
        let l = s.leases.get(ip(100)).unwrap();
        assert_eq!((l.state, l.expires), (LeaseState::Declined, 1 + 600));
        assert_eq!(reply(s.probe_done(ip(101), false, 2)).reply.yiaddr, ip(101));
        // Every candidate answering: nothing to offer.
        let mut s = probing_server();
        assert_eq!(probe(discover(&mut s, MAC2, 0)), ip(100));
        assert_eq!(probe(s.probe_done(ip(100), true, 0)), ip(101));
        assert!(matches!(s.probe_done(ip(101), true, 0), Err(Dropped::Exhausted)));
        // After the quarantine the address is checked again, not trusted.
        assert_eq!(probe(discover(&mut s, MAC, 600)), ip(100));
    }

    #[test]
    fn ping_check_skips_what_the_client_holds() {
        let mut s = probing_server();
        lease_probed(&mut s, MAC, ip(100), 0);
        // Renewal and a new DISCOVER while bound: answered at once.
        assert_eq!(go(&mut s, &with_ciaddr(msg(3, MAC, &[]), ip(100)), 1800).reply.msg_type, Msg::Ack);
        assert_eq!(go(&mut s, &msg(1, MAC, &[]), 1801).reply.yiaddr, ip(100));
        // A reservation is checked the first time, not once its client holds it.
        lease_probed(&mut s, RESERVED_MAC, ip(42), 0);
        assert_eq!(go(&mut s, &msg(1, RESERVED_MAC, &[]), 5).reply.yiaddr, ip(42));
        // Once the lease has run out, the client's own old address is checked again.
        s.leases.expire(1800 + 3600);
        assert_eq!(probe(discover(&mut s, MAC, 1800 + 3600)), ip(100));
        // A check whose outcome never came does not hold the client back for ever.
        assert!(silent(&mut s, &msg(1, MAC, &[]), 1800 + 3600 + 10).contains("being pinged"));
        assert_eq!(probe(discover(&mut s, MAC, 1800 + 3600 + PROBE_STALE)), ip(100));
    }

    fn pxe_discover(arch: u8, extra: &[(u8, &[u8])]) -> Vec<u8> {
        let uuid: Vec<u8> = (0..17).collect();
        let arch_opt = [0, arch];
        let mut o: Vec<(u8, &[u8])> =
            vec![(opt::VENDOR_CLASS, PXE_BIOS), (opt::CLIENT_ARCH, &arch_opt), (opt::CLIENT_UUID, &uuid)];
        o.extend_from_slice(extra);
        msg(1, MAC, &o)
    }

    #[test]
    fn pxe_boot_information_only_for_enrolled_macs() {
        let mut s = server();
        let allowed = crate::broker::enrolment::Approved::default();
        s.pxe_allowed = Some(allowed.clone());
        // Not enrolled: an address, but no next-server, boot file or PXE options; held back once.
        for now in 0..2 {
            let r = go(&mut s, &pxe_discover(0, &[]), now).reply;
            assert_eq!((r.msg_type, r.yiaddr), (Msg::Offer, ip(100)));
            assert_eq!((r.file.as_deref(), r.siaddr, r.option(opt::VENDOR_CLASS)), (None, Ipv4Addr::UNSPECIFIED, None));
            assert_eq!(r.option(opt::BOOTFILE_NAME), None);
        }
        let ipxe = go(&mut s, &msg(1, MAC, &[(opt::USER_CLASS, b"iPXE")]), 2).reply;
        assert_eq!(ipxe.file, None);
        assert_eq!(std::mem::take(&mut s.held_back), vec!["02:00:00:00:00:01".to_string()]);
        // Approved: the boot file at the next request, nothing held back.
        allowed.write().unwrap().insert("02:00:00:00:00:01".into());
        let r = go(&mut s, &pxe_discover(0, &[]), 3).reply;
        assert_eq!((r.file.as_deref(), r.siaddr), (Some("undionly.kpxe"), SERVER));
        assert!(s.held_back.is_empty());
        // In proxyDHCP mode an unenrolled PXE client is not answered at all.
        let mut p = server_with(MemoryStore::default(), true);
        p.pxe_allowed = Some(crate::broker::enrolment::Approved::default());
        assert!(silent(&mut p, &pxe_discover(0, &[]), 0).contains("not a PXE client"));
    }

    #[test]
    fn pxe_bios_uefi_and_ipxe() {
        let mut s = server();
        let r = go(&mut s, &pxe_discover(0, &[]), 0).reply;
        assert_eq!(r.file.as_deref(), Some("undionly.kpxe"));
        assert_eq!(r.sname.as_deref(), Some("10.0.0.1"));
        assert_eq!(r.siaddr, SERVER);
        assert_eq!(r.option(opt::BOOTFILE_NAME), Some(&b"undionly.kpxe"[..]));
        assert_eq!(r.option(opt::TFTP_SERVER_NAME), Some(&b"10.0.0.1"[..]));
        assert_eq!(r.option(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]));
        assert_eq!(r.option(opt::CLIENT_UUID).map(|u| u.len()), Some(17));
        assert_eq!(r.option(opt::VENDOR_SPECIFIC), Some(&[6, 1, 8, 255][..]));
        assert_eq!(r.option(opt::IPXE_ENCAP), None);
        assert_eq!(r.yiaddr, ip(100));
        for arch in [7, 9] {
            assert_eq!(go(&mut s, &pxe_discover(arch, &[]), 0).reply.file.as_deref(), Some("ipxe.efi"));
        }
        assert_eq!(go(&mut s, &pxe_discover(11, &[]), 0).reply.file, None);
        let r = go(&mut s, &pxe_discover(0, &[(opt::USER_CLASS, b"iPXE")]), 0).reply;
        assert_eq!(r.option(opt::BOOTFILE_NAME), Some(&b"http://10.0.0.1:8080/boot.ipxe"[..]));
        assert_eq!(r.file.as_deref(), Some("http://10.0.0.1:8080/boot.ipxe"));
        assert_eq!(r.option(opt::IPXE_ENCAP), Some(&[176, 1, 1][..]));
        assert_eq!(r.option(opt::VENDOR_SPECIFIC), None);
    }

    #[test]
    fn proxy_mode_answers_only_pxe() {
        let mut s = server_with(MemoryStore::default(), true);
        let o = go(&mut s, &pxe_discover(0, &[]), 0);
        let r = &o.reply;
        assert_eq!((r.msg_type, r.yiaddr, r.siaddr), (Msg::Offer, Ipv4Addr::UNSPECIFIED, SERVER));
        assert_eq!(r.file.as_deref(), Some("undionly.kpxe"));
        assert_eq!(r.option(opt::LEASE_TIME), None);
        assert_eq!(r.option(opt::SUBNET_MASK), None);
        assert_eq!(r.option(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]));
        assert_eq!(o.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        // iPXE in proxy mode: the script, and no "skip ProxyDHCP" hint.
        let r = go(&mut s, &pxe_discover(0, &[(opt::USER_CLASS, b"iPXE")]), 0).reply;
        assert_eq!(r.file.as_deref(), Some("http://10.0.0.1:8080/boot.ipxe"));
        assert_eq!(r.option(opt::IPXE_ENCAP), None);
        // Plain clients and non-DISCOVERs on 67 are ignored; no lease is ever made.
        assert!(silent(&mut s, &msg(1, MAC2, &[]), 0).contains("PXE clients only"));
        let mut req = pxe_discover(0, &[]);
        req[HDR_TYPE] = 3;
        assert!(silent(&mut s, &req, 0).contains("ignores"));
        assert!(s.leases.get(ip(100)).is_none());
        // REQUEST on 4011: ACK straight back to the sender.
        let client = SocketAddrV4::new(ip(150), 68);
        let o = reply(s.handle(&with_ciaddr(req, ip(150)), Via::Pxe, client, 0));
        assert_eq!((o.reply.msg_type, o.to, o.via), (Msg::Ack, client, Via::Pxe));
        assert_eq!(o.reply.file.as_deref(), Some("undionly.kpxe"));
        // No boot file for the architecture: nothing to say.
        assert!(silent(&mut s, &pxe_discover(11, &[]), 0).contains("no boot file"));
    }

    /// Offset of option 53's value in `client_msg` output.
    const HDR_TYPE: usize = 242;

    #[test]
    fn malformed_input_is_dropped_not_panicked() {
        let mut s = server();
        for bad in [&[][..], &[1u8; 10][..], &[0u8; 300][..]] {
            assert!(matches!(s.handle(bad, Via::Dhcp, peer(), 0), Err(Dropped::Malformed(_))));
        }
        let mut b = msg(1, MAC, &[]);
        b.truncate(240);
        assert!(matches!(s.handle(&b, Via::Dhcp, peer(), 0), Err(Dropped::Malformed(ParseError::MissingType))));
        assert_eq!(Dropped::Malformed(ParseError::MissingType).level(), log::Level::Warn);
        // Structurally fine but semantically empty: REQUEST with nothing to go on.
        assert!(silent(&mut s, &msg(3, MAC, &[(opt::SERVER_ID, &sid())]), 0).contains("no address"));
        // Every prefix and a few bit flips of a real packet.
        let full = pxe_discover(7, &[(opt::USER_CLASS, b"iPXE"), (opt::IPXE_ENCAP, &[1, 1, 1])]);
        for n in 0..full.len() {
            let _ = s.handle(&full[..n], Via::Dhcp, peer(), 0);
            let mut f = full.clone();
            f[n] ^= 0xa5;
            let _ = s.handle(&f, Via::Dhcp, peer(), 0);
        }
    }
}
