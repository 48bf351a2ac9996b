//! Keeping a lease, RFC 2131 section 4.4.5, as a state machine without I/O: the caller hands
//! it the time and the DHCP messages it received, and gets back what to send, how long to
//! wait, a renewed lease, or the news that the lease is gone.
//!
//! BOUND until T1 (option 58, else half the lease); then RENEWING: DHCPREQUESTs unicast to the
//! server that gave the lease; from T2 (option 59, else 7/8 of the lease) REBINDING: the same
//! request broadcast to any server. A DHCPACK puts the client back in BOUND with the new lease;
//! a DHCPNAK, or the lease running out, ends it (the caller then starts over with DISCOVER).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};

use super::dhcp::{parse_extras, Lease, PARAMETER_REQUEST_LIST};

pub(crate) const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const OPT_MESSAGE: u8 = 56;
/// RFC 2131's floor between retransmissions (60 s) is meant for leases of hours; a lease of a
/// few minutes gets 1/16 of its time instead, so that it still sees several attempts.
const RFC_MIN_RETRY: Duration = Duration::from_secs(60);
const MIN_RETRY_DIVISOR: u32 = 16;
/// BOOTP's minimum message size (RFC 1542 section 2.1), which some servers still insist on.
const MIN_MESSAGE_LEN: usize = 300;
/// What we can receive: an Ethernet frame without the IPv4 and UDP headers.
const MAX_MESSAGE_SIZE: u16 = 1500 - 20 - 8;
/// How far ahead an infinite lease looks; it never needs renewing.
const FOREVER: Duration = Duration::from_secs(24 * 3600);

/// When, counted from the start of the lease, the client renews, rebinds, and loses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub expiry: Duration,
}

impl Timers {
    /// T1 and T2 from options 58 and 59 when they make sense (0 < T1 <= T2 < lease); otherwise
    /// the RFC's 0.5 and 0.875 of the lease. `None` for an infinite lease (or none at all).
    pub(crate) fn for_lease(lease_secs: Option<u32>, t1: Option<u32>, t2: Option<u32>) -> Option<Timers> {
        let lease = lease_secs.filter(|s| *s != u32::MAX)?;
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let expiry = secs(lease);
        let t2 = match t2 {
            Some(s) if s > 0 && s < lease => secs(s),
            Some(s) => {
                log::warn!("DHCP T2 of {s} s does not fit a lease of {lease} s; using 7/8 of the lease");
                expiry * 7 / 8
            }
            None => expiry * 7 / 8,
        };
        let t1 = match t1 {
            Some(s) if s > 0 && secs(s) <= t2 => secs(s),
            Some(s) => {
                log::warn!("DHCP T1 of {s} s does not fit T2 of {t2:?}; using half the lease");
                (expiry / 2).min(t2)
            }
            None => (expiry / 2).min(t2),
        };
        Some(Timers { t1, t2, expiry })
    }

    fn min_retry(&self) -> Duration {
        (self.expiry / MIN_RETRY_DIVISOR).clamp(Duration::from_secs(1), RFC_MIN_RETRY)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Bound,
    Renewing,
    Rebinding,
}

/// Why the lease is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lost {
    Nak { server: Option<Ipv4Addr>, message: Option<String> },
    Expired,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Nak { server, message } => {
                write!(f, "the DHCP server")?;
                if let Some(s) = server {
                    write!(f, " {s}")?;
                }
                write!(f, " refused the lease (DHCPNAK")?;
                if let Some(m) = message {
                    write!(f, ": {m:?}")?;
                }
                write!(f, ")")
            }
            Lost::Expired => write!(f, "the lease ran out with no answer from any DHCP server"),
        }
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Send this DHCP message (UDP payload) to this address, port 67.
    Send { to: SocketAddrV4, packet: Vec<u8> },
    /// Wait for a message or this instant, whichever comes first, then poll again.
    Wait(Instant),
    Lost(Lost),
}

/// What a received message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A DHCPACK: this is the lease now (the same address; other options may have changed).
    Renewed(Lease),
    Lost(Lost),
}

/// One lease being kept.
pub(crate) struct Keeper {
    mac: [u8; 6],
    lease: Lease,
    phase: Phase,
    /// When the lease (or its last renewal) started: the timers count from here.
    start: Instant,
    timers: Option<Timers>,
    xid: u32,
    rng: u64,
    /// When this round of renewing began, for the `secs` field.
    round_start: Instant,
    next_send: Instant,
}

impl Keeper {
    /// Starts keeping `lease`, acknowledged at `now`. `seed` makes the transaction IDs; PCs
    /// that boot together must pass different ones.
    pub(crate) fn new(mac: [u8; 6], lease: Lease, now: Instant, seed: u64) -> Self {
        let timers = Timers::for_lease(lease.lease_secs, lease.renew_secs, lease.rebind_secs);
        Keeper { mac, lease, phase: Phase::Bound, start: now, timers, xid: 0, rng: seed | 1, round_start: now, next_send: now }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The lease's timers, `None` when it never ends.
    #[cfg(test)]
    pub(crate) fn timers(&self) -> Option<Timers> {
        self.timers
    }

    fn next_xid(&mut self) -> u32 {
        // xorshift64: transaction IDs only have to differ, not be secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 32) as u32
    }

    /// Advances to `now`: the next message to send, or how long to wait.
    pub(crate) fn poll(&mut self, now: Instant) -> Output {
        let Some(timers) = self.timers else { return Output::Wait(now + FOREVER) };
        let (t1, t2, expiry) = (self.start + timers.t1, self.start + timers.t2, self.start + timers.expiry);
        if now >= expiry {
            return Output::Lost(Lost::Expired);
        }
        if self.phase == Phase::Bound {
            if now < t1 {
                return Output::Wait(t1);
            }
            self.phase = Phase::Renewing;
            self.xid = self.next_xid();
            self.round_start = now;
            self.next_send = now;
            log::info!("T1: renewing {} with the server {} (unicast)", self.lease.address, self.lease.server);
        }
        if self.phase == Phase::Renewing && now >= t2 {
            self.phase = Phase::Rebinding;
            self.next_send = now;
            log::info!("T2: no answer from {}; rebinding {} with any server (broadcast)", self.lease.server, self.lease.address);
        }
        let (boundary, to) = match self.phase {
            Phase::Renewing => (t2, SocketAddrV4::new(self.lease.server, SERVER_PORT)),
            _ => (expiry, SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)),
        };
        if now < self.next_send {
            return Output::Wait(self.next_send);
        }
        // Half the time left until the next phase, but not less than the floor; past the
        // boundary the next phase takes over.
        let left = boundary.saturating_duration_since(now);
        self.next_send = (now + (left / 2).max(timers.min_retry())).min(boundary);
        match self.request(now) {
            Some(packet) => Output::Send { to, packet },
            None => Output::Wait(self.next_send),
        }
    }

    /// The DHCPREQUEST of RENEWING and REBINDING (RFC 2131 table 5): our address in `ciaddr`,
    /// neither 'requested IP address' nor 'server identifier'.
    fn request(&self, now: Instant) -> Option<Vec<u8>> {
        let secs = now.saturating_duration_since(self.round_start).as_secs().min(u64::from(u16::MAX)) as u16;
        let repr = DhcpRepr {
            secs,
            client_ip: self.lease.address,
            // The same identifier as during DISCOVER (smoltcp sends the MAC): the RFC wants one
            // identifier for all of a client's messages.
            client_identifier: Some(EthernetAddress(self.mac)),
            parameter_request_list: Some(&PARAMETER_REQUEST_LIST),
            max_size: Some(MAX_MESSAGE_SIZE),
            ..bare_message(DhcpMessageType::Request, self.xid, self.mac)
        };
        let mut buf = vec![0u8; repr.buffer_len().max(MIN_MESSAGE_LEN)];
        match repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..])) {
            Ok(()) => Some(buf),
            Err(e) => {
                log::error!("building a DHCPREQUEST: {e}");
                None
            }
        }
    }

    /// Takes a message that arrived at `now` on port 68. Anything that is not an answer to our
    /// current request is dropped (and logged); a DHCPACK restarts the timers.
    pub(crate) fn receive(&mut self, now: Instant, bytes: &[u8]) -> Option<Reply> {
        if self.phase == Phase::Bound {
            log::debug!("DHCP message of {} bytes while bound, ignored", bytes.len());
            return None;
        }
        let packet = match DhcpPacket::new_checked(bytes) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("malformed DHCP message of {} bytes dropped: {e}", bytes.len());
                return None;
            }
        };
        let repr = match DhcpRepr::parse(&packet) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("malformed DHCP message of {} bytes dropped: {e}", bytes.len());
                return None;
            }
        };
        if repr.transaction_id != self.xid || repr.client_hardware_address != EthernetAddress(self.mac) {
            log::debug!(
                "DHCP {:?} for {} (xid {:#010x}) is not ours (xid {:#010x}), ignored",
                repr.message_type,
                repr.client_hardware_address,
                repr.transaction_id,
                self.xid
            );
            return None;
        }
        match repr.message_type {
            DhcpMessageType::Ack => {
                if repr.your_ip != self.lease.address {
                    log::warn!(
                        "DHCPACK from {:?} offers {} instead of our {}, ignored",
                        repr.server_identifier,
                        repr.your_ip,
                        self.lease.address
                    );
                    return None;
                }
                let extras = parse_extras(packet.options().map(|o| (o.kind, o.data)));
                if extras.lease_secs.is_none() {
                    log::warn!("DHCPACK without a lease time; keeping the last one");
                }
                let old = &self.lease;
                // An option the ACK leaves out keeps its value: a server that answers a renewal
                // tersely is not saying that the router or DNS servers are gone.
                let lease = Lease {
                    address: repr.your_ip,
                    prefix_len: repr.subnet_mask.and_then(prefix_len).unwrap_or(old.prefix_len),
                    router: repr.router.or(old.router),
                    dns: repr.dns_servers.map(|d| d.iter().copied().collect()).unwrap_or_else(|| old.dns.clone()),
                    server: repr.server_identifier.unwrap_or(old.server),
                    lease_secs: extras.lease_secs.or(old.lease_secs),
                    renew_secs: extras.renew_secs,
                    rebind_secs: extras.rebind_secs,
                    broker: extras.broker.or(old.broker),
                };
                log::info!(
                    "DHCPACK in {:?} from {}: {} kept for {} s",
                    self.phase,
                    lease.server,
                    lease.address,
                    lease.lease_secs.map_or_else(|| "?".into(), |s| s.to_string())
                );
                self.timers = Timers::for_lease(lease.lease_secs, lease.renew_secs, lease.rebind_secs);
                self.lease = lease.clone();
                self.start = now;
                self.phase = Phase::Bound;
                Some(Reply::Renewed(lease))
            }
            DhcpMessageType::Nak => {
                let message = packet
                    .options()
                    .find(|o| o.kind == OPT_MESSAGE)
                    .map(|o| String::from_utf8_lossy(o.data).trim_end_matches('\0').to_string());
                Some(Reply::Lost(Lost::Nak { server: repr.server_identifier, message }))
            }
            other => {
                log::debug!("DHCP {other:?} while {:?}, ignored", self.phase);
                None
            }
        }
    }
}

/// A message with every address zero and no options but its type.
fn bare_message<'a>(message_type: DhcpMessageType, xid: u32, mac: [u8; 6]) -> DhcpRepr<'a> {
    DhcpRepr {
        message_type,
        transaction_id: xid,
        secs: 0,
        client_hardware_address: EthernetAddress(mac),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    }
}

/// The prefix length of a contiguous subnet mask.
fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::DhcpOption;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn lease(secs: u32, t1: Option<u32>, t2: Option<u32>) -> Lease {
        Lease {
            address: ADDR,
            prefix_len: 24,
            router: Some(SERVER),
            dns: vec![SERVER],
            server: SERVER,
            lease_secs: Some(secs),
            renew_secs: t1,
            rebind_secs: t2,
            broker: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn reply(kind: DhcpMessageType, xid: u32, yiaddr: Ipv4Addr, options: &[DhcpOption<'_>]) -> Vec<u8> {
        reply_from(SERVER, kind, xid, yiaddr, options)
    }

    /// A server's reply, as bytes.
    fn reply_from(
        server: Ipv4Addr,
        kind: DhcpMessageType,
        xid: u32,
        yiaddr: Ipv4Addr,
        options: &[DhcpOption<'_>],
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            client_ip: ADDR,
            your_ip: yiaddr,
            server_identifier: Some(server),
            additional_options: options,
            ..bare_message(kind, xid, MAC)
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..])).unwrap();
        buf
    }

    fn ack(xid: u32, lease_secs: u32, extra: &[DhcpOption<'_>]) -> Vec<u8> {
        let time = lease_secs.to_be_bytes();
        let mut options = vec![DhcpOption { kind: 51, data: &time }];
        options.extend_from_slice(extra);
        reply(DhcpMessageType::Ack, xid, ADDR, &options)
    }

    /// Polls until a message goes out; returns where to, and the request's xid.
    fn expect_send(k: &mut Keeper, now: Instant) -> (SocketAddrV4, u32) {
        match k.poll(now) {
            Output::Send { to, packet } => {
                let p = DhcpPacket::new_checked(&packet[..]).unwrap();
                let r = DhcpRepr::parse(&p).unwrap();
                assert_eq!(r.message_type, DhcpMessageType::Request);
                assert_eq!(r.client_ip, ADDR, "ciaddr is our address");
                assert_eq!(r.your_ip, Ipv4Addr::UNSPECIFIED);
                assert!(!r.broadcast);
                let kinds: Vec<u8> = p.options().map(|o| o.kind).collect();
                assert!(!kinds.contains(&50), "no requested IP option in {kinds:?}");
                assert!(!kinds.contains(&54), "no server identifier option in {kinds:?}");
                assert!(packet.len() >= MIN_MESSAGE_LEN);
                (to, r.transaction_id)
            }
            other => panic!("expected a DHCPREQUEST, got {other:?}"),
        }
    }

    fn unicast() -> SocketAddrV4 {
        SocketAddrV4::new(SERVER, 67)
    }

    fn broadcast() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)
    }

    #[test]
    fn default_timers_are_half_and_seven_eighths() {
        let t = Timers::for_lease(Some(3600), None, None).unwrap();
        assert_eq!((t.t1, t.t2, t.expiry), (secs(1800), secs(3150), secs(3600)));
        assert_eq!(t.min_retry(), secs(60));
        assert_eq!(Timers::for_lease(Some(u32::MAX), None, None), None);
        assert_eq!(Timers::for_lease(None, Some(10), Some(20)), None);
    }

    #[test]
    fn options_58_and_59_are_used_when_they_fit() {
        let t = Timers::for_lease(Some(120), Some(10), Some(20)).unwrap();
        assert_eq!((t.t1, t.t2, t.expiry), (secs(10), secs(20), secs(120)));
        assert_eq!(t.min_retry(), Duration::from_millis(7500));
        // T2 past the lease, T1 past T2, zeros: the defaults.
        let t = Timers::for_lease(Some(120), Some(10), Some(500)).unwrap();
        assert_eq!((t.t1, t.t2), (secs(10), secs(105)));
        let t = Timers::for_lease(Some(120), Some(30), Some(20)).unwrap();
        assert_eq!((t.t1, t.t2), (secs(20), secs(20)));
        let t = Timers::for_lease(Some(120), Some(0), Some(0)).unwrap();
        assert_eq!((t.t1, t.t2), (secs(60), secs(105)));
    }

    #[test]
    fn renews_unicast_at_t1_then_rebinds_broadcast_at_t2_then_expires() {
        let t0 = Instant::now();
        let mut k = Keeper::new(MAC, lease(3600, None, None), t0, 7);
        assert_eq!(k.poll(t0), Output::Wait(t0 + secs(1800)));
        assert_eq!(k.poll(t0 + secs(1799)), Output::Wait(t0 + secs(1800)));

        let (to, xid) = expect_send(&mut k, t0 + secs(1800));
        assert_eq!((to, k.phase()), (unicast(), Phase::Renewing));
        // Half of the 1350 s left until T2, then half of what is left, down to 60 s.
        assert_eq!(k.poll(t0 + secs(1800)), Output::Wait(t0 + secs(2475)));
        assert_eq!(expect_send(&mut k, t0 + secs(2475)), (unicast(), xid));
        assert_eq!(k.poll(t0 + secs(2475)), Output::Wait(t0 + secs(2812) + Duration::from_millis(500)));
        let _ = expect_send(&mut k, t0 + secs(2813));
        let _ = expect_send(&mut k, t0 + secs(2982));
        assert_eq!(k.poll(t0 + secs(2982)), Output::Wait(t0 + secs(3066)));
        let _ = expect_send(&mut k, t0 + secs(3066));
        // 84 s left: half of it is below the 60 s floor.
        assert_eq!(k.poll(t0 + secs(3066)), Output::Wait(t0 + secs(3126)));
        let _ = expect_send(&mut k, t0 + secs(3126));
        // 24 s left: the floor would pass T2, so the next event is T2 itself.
        assert_eq!(k.poll(t0 + secs(3126)), Output::Wait(t0 + secs(3150)));

        let (to, xid2) = expect_send(&mut k, t0 + secs(3150));
        assert_eq!((to, k.phase(), xid2), (broadcast(), Phase::Rebinding, xid));
        assert_eq!(k.poll(t0 + secs(3150)), Output::Wait(t0 + secs(3375)));
        assert_eq!(expect_send(&mut k, t0 + secs(3375)).0, broadcast());
        assert_eq!(k.poll(t0 + secs(3375)), Output::Wait(t0 + secs(3487) + Duration::from_millis(500)));
        assert_eq!(expect_send(&mut k, t0 + secs(3488)).0, broadcast());
        assert_eq!(k.poll(t0 + secs(3488)), Output::Wait(t0 + secs(3548)));
        assert_eq!(expect_send(&mut k, t0 + secs(3548)).0, broadcast());
        // The last attempt: the next event is the end of the lease.
        assert_eq!(k.poll(t0 + secs(3599)), Output::Wait(t0 + secs(3600)));
        assert_eq!(k.poll(t0 + secs(3600)), Output::Lost(Lost::Expired));
        assert_eq!(Lost::Expired.to_string(), "the lease ran out with no answer from any DHCP server");
    }

    #[test]
    fn ack_keeps_the_address_applies_new_options_and_restarts_the_timers() {
        let t0 = Instant::now();
        let mut k = Keeper::new(MAC, lease(120, Some(10), Some(20)), t0, 7);
        assert_eq!(k.poll(t0), Output::Wait(t0 + secs(10)));
        let (_, xid) = expect_send(&mut k, t0 + secs(10));
        let router = [10, 0, 0, 254];
        let (t1, t2) = (30u32.to_be_bytes(), 50u32.to_be_bytes());
        let bytes = ack(
            xid,
            600,
            &[
                DhcpOption { kind: 3, data: &router },
                DhcpOption { kind: 58, data: &t1 },
                DhcpOption { kind: 59, data: &t2 },
            ],
        );
        let now = t0 + secs(11);
        let Some(Reply::Renewed(l)) = k.receive(now, &bytes) else { panic!("ACK not taken") };
        assert_eq!(l.address, ADDR);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(l.dns, vec![SERVER], "options the ACK lacks keep their value");
        assert_eq!((l.lease_secs, l.renew_secs, l.rebind_secs), (Some(600), Some(30), Some(50)));
        assert_eq!(k.phase(), Phase::Bound);
        assert_eq!(k.poll(now), Output::Wait(now + secs(30)));
        // The next round uses a fresh transaction ID; a late copy of the old ACK is ignored.
        let (_, xid2) = expect_send(&mut k, now + secs(30));
        assert_ne!(xid2, xid);
        assert_eq!(k.receive(now + secs(31), &bytes), None);
        assert_eq!(k.phase(), Phase::Renewing);
    }

    #[test]
    fn ack_in_rebinding_from_another_server_moves_the_lease_there() {
        let t0 = Instant::now();
        let mut k = Keeper::new(MAC, lease(120, Some(10), Some(20)), t0, 7);
        let _ = expect_send(&mut k, t0 + secs(10));
        let (to, xid) = expect_send(&mut k, t0 + secs(20));
        assert_eq!(to, broadcast());
        let other = Ipv4Addr::new(10, 0, 0, 2);
        let time = 120u32.to_be_bytes();
        let bytes = reply_from(other, DhcpMessageType::Ack, xid, ADDR, &[DhcpOption { kind: 51, data: &time }]);
        let Some(Reply::Renewed(l)) = k.receive(t0 + secs(21), &bytes) else { panic!("ACK not taken") };
        assert_eq!((l.server, l.lease_secs), (other, Some(120)));
        assert_eq!((l.renew_secs, l.rebind_secs), (None, None));
        assert_eq!(k.lease().server, other, "the next renewal goes to the server that answered");
        assert_eq!(k.poll(t0 + secs(21)), Output::Wait(t0 + secs(81)));
    }

    #[test]
    fn nak_ends_the_lease_with_the_servers_reason() {
        let t0 = Instant::now();
        let mut k = Keeper::new(MAC, lease(120, Some(10), Some(20)), t0, 7);
        let (_, xid) = expect_send(&mut k, t0 + secs(10));
        let nak = reply(DhcpMessageType::Nak, xid, Ipv4Addr::UNSPECIFIED, &[DhcpOption { kind: 56, data: b"wrong network" }]);
        let lost = Lost::Nak { server: Some(SERVER), message: Some("wrong network".into()) };
        assert_eq!(k.receive(t0 + secs(11), &nak), Some(Reply::Lost(lost.clone())));
        assert_eq!(lost.to_string(), "the DHCP server 10.0.0.1 refused the lease (DHCPNAK: \"wrong network\")");
    }

    #[test]
    fn replies_not_for_us_are_ignored() {
        let t0 = Instant::now();
        let mut k = Keeper::new(MAC, lease(120, Some(10), Some(20)), t0, 7);
        // While bound nothing is expected, not even a matching-looking ACK.
        assert_eq!(k.receive(t0 + secs(1), &ack(0, 120, &[])), None);
        let (_, xid) = expect_send(&mut k, t0 + secs(10));
        let now = t0 + secs(11);
        assert_eq!(k.receive(now, &ack(xid.wrapping_add(1), 120, &[])), None, "wrong xid");
        let nak = reply(DhcpMessageType::Nak, xid ^ 0x8000_0000, Ipv4Addr::UNSPECIFIED, &[]);
        assert_eq!(k.receive(now, &nak), None, "a NAK with the wrong xid does not end the lease");
        let offer = reply(DhcpMessageType::Offer, xid, ADDR, &[]);
        assert_eq!(k.receive(now, &offer), None, "an OFFER is no answer to a REQUEST");
        let other_addr = reply(DhcpMessageType::Ack, xid, Ipv4Addr::new(10, 0, 0, 99), &[]);
        assert_eq!(k.receive(now, &other_addr), None, "an ACK for another address");
        let good = ack(xid, 120, &[]);
        assert_eq!(k.receive(now, &good[..100]), None, "truncated");
        assert_eq!(k.receive(now, &[]), None, "empty");
        let mut bad_magic = good.clone();
        bad_magic[236] ^= 0xff;
        assert_eq!(k.receive(now, &bad_magic), None, "no DHCP magic cookie");
        assert_eq!(k.phase(), Phase::Renewing);
        assert!(matches!(k.receive(now, &good), Some(Reply::Renewed(_))));
    }

    #[test]
    fn infinite_lease_is_never_renewed() {
        let t0 = Instant::now();
        let mut k = Keeper::new(MAC, lease(u32::MAX, None, None), t0, 7);
        assert_eq!(k.timers(), None);
        assert_eq!(k.poll(t0 + secs(1_000_000)), Output::Wait(t0 + secs(1_000_000) + FOREVER));
    }

    #[test]
    fn subnet_masks() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::UNSPECIFIED), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
