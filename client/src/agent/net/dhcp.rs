//! The agent's DHCP client: smoltcp's DHCPv4 socket over an `AF_PACKET` socket on the NIC.
//!
//! The kernel holds no address while this runs, so smoltcp's own small interface (with the
//! NIC's real MAC) does the exchange; the result is then handed to the kernel by
//! [`super::netlink`]. Keeping the lease afterwards (renewing, rebinding) is
//! [`super::renew`]'s job, over a kernel UDP socket once the address is up.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{wait as phy_wait, Checksum, Device, DeviceCapabilities, Medium, RawSocket, TxToken};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

/// Private-use DHCP option (RFC 3942 leaves 224-254 to sites) that carries the broker's
/// address, either as text `IP:PORT` or as 6 bytes (IPv4 address, port big-endian).
/// dnsmasq: `--dhcp-option=224,"10.0.0.1:7000"`.
pub(crate) const BROKER_OPTION: u8 = 224;
const OPT_LEASE_TIME: u8 = 51;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;

/// Subnet mask, router, DNS, domain name, T1, T2, and the broker option. Servers such as
/// dnsmasq send configured options only when asked for them here.
pub(crate) static PARAMETER_REQUEST_LIST: [u8; 7] =
    [1, 3, 6, 15, OPT_RENEWAL_TIME, OPT_REBINDING_TIME, BROKER_OPTION];

/// What the DHCP server handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: Option<u32>,
    /// T1 (option 58), when the server sent it.
    pub renew_secs: Option<u32>,
    /// T2 (option 59), when the server sent it.
    pub rebind_secs: Option<u32>,
    pub broker: Option<SocketAddr>,
}

/// The options smoltcp's config does not carry itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    pub lease_secs: Option<u32>,
    pub renew_secs: Option<u32>,
    pub rebind_secs: Option<u32>,
    pub broker: Option<SocketAddr>,
}

/// Reads the lease time and the broker option from a packet's options. Malformed values are
/// ignored with a log line: a wrong private option must not stop the PC from booting.
pub(crate) fn parse_extras<'a>(options: impl Iterator<Item = (u8, &'a [u8])>) -> Extras {
    let mut out = Extras::default();
    for (kind, data) in options {
        match kind {
            OPT_LEASE_TIME | OPT_RENEWAL_TIME | OPT_REBINDING_TIME => {
                let slot = match kind {
                    OPT_LEASE_TIME => &mut out.lease_secs,
                    OPT_RENEWAL_TIME => &mut out.renew_secs,
                    _ => &mut out.rebind_secs,
                };
                match <[u8; 4]>::try_from(data) {
                    Ok(b) => *slot = Some(u32::from_be_bytes(b)),
                    Err(_) => log::warn!("DHCP time option {kind} of {} bytes ignored", data.len()),
                }
            }
            BROKER_OPTION => match parse_broker(data) {
                Some(a) => out.broker = Some(a),
                None => log::warn!("DHCP option {BROKER_OPTION} {data:?} is not IP:PORT, ignored"),
            },
            _ => {}
        }
    }
    out
}

fn parse_broker(data: &[u8]) -> Option<SocketAddr> {
    if let Ok(text) = std::str::from_utf8(data) {
        // dnsmasq sends the quotes of `--dhcp-option=224,"IP:PORT"` along.
        if let Ok(a) = text.trim_end_matches('\0').trim().trim_matches('"').parse() {
            return Some(a);
        }
    }
    if data.len() == 6 {
        let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        return Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be_bytes([data[4], data[5]]))));
    }
    None
}

/// The NIC as smoltcp sees it, except that received UDP checksums are not verified: frames
/// that the local kernel sends (a server in a container, or on a veth) reach a packet socket
/// with checksum offload still pending, so their UDP checksum field is not final. The
/// Ethernet CRC has already vouched for the bytes.
/// It also counts the frames smoltcp sends on its own (not in reply to a received one): while
/// the DHCP socket discovers, each is a DISCOVER, and the count drives the backoff.
struct Nic {
    raw: RawSocket,
    sent: Rc<Cell<u32>>,
}

/// A send token that counts the frame once it is built.
struct CountingTx<T> {
    inner: T,
    sent: Option<Rc<Cell<u32>>>,
}

impl<T: TxToken> TxToken for CountingTx<T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if let Some(sent) = &self.sent {
            sent.set(sent.get().saturating_add(1));
        }
        self.inner.consume(len, f)
    }
}

impl Device for Nic {
    type RxToken<'a> = <RawSocket as Device>::RxToken<'a>;
    type TxToken<'a> = CountingTx<<RawSocket as Device>::TxToken<'a>>;

    fn receive(&mut self, ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.raw.receive(ts).map(|(rx, tx)| (rx, CountingTx { inner: tx, sent: None }))
    }

    fn transmit(&mut self, ts: Instant) -> Option<Self::TxToken<'_>> {
        let sent = self.sent.clone();
        self.raw.transmit(ts).map(|tx| CountingTx { inner: tx, sent: Some(sent) })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = self.raw.capabilities();
        caps.checksum.udp = Checksum::Tx;
        caps
    }
}

/// How long to wait for an OFFER after the `n`th DISCOVER (0-based): 4 s as RFC 2131 says,
/// doubling up to 16 s, each stretched by up to an eighth from `jitter` so that PCs powered on
/// together drift apart. Not shorter: smoltcp gives each DISCOVER a new transaction ID, so an
/// OFFER that is merely slow (dnsmasq pings an address for up to 3 s before offering it) would
/// be dropped once the next DISCOVER has gone out. Speed comes from sending the first DISCOVER
/// the moment the carrier is up, not from retransmitting early.
pub(crate) fn discover_backoff(n: u32, jitter: u64) -> Duration {
    let base = Duration::from_secs(4) * (1u32 << n.min(2));
    base + base.mul_f64((jitter % 1000) as f64 / 8000.0)
}

/// The REQUEST timeout; smoltcp doubles it every second try and falls back to DISCOVER after
/// its retries. Like a DISCOVER, each retransmission gets a new transaction ID, so this leaves
/// a server time to store the lease before it answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn now() -> Instant {
    Instant::from_micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
    )
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on `ifname` until a lease arrives or `timeout` passes.
/// The first DISCOVER goes out at once; retransmissions back off ([`discover_backoff`]).
pub(crate) fn acquire(ifname: &str, mac: [u8; 6], timeout: Duration) -> anyhow::Result<Lease> {
    let sent = Rc::new(Cell::new(0u32));
    let mut device = Nic {
        raw: RawSocket::new(ifname, Medium::Ethernet)
            .with_context(|| format!("opening a packet socket on {ifname}"))?,
        sent: sent.clone(),
    };
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    // Transaction IDs must differ between PCs that power on together: mix in the MAC.
    let mut seed = [0u8; 8];
    seed[..6].copy_from_slice(&mac);
    config.random_seed = u64::from_le_bytes(seed) ^ now().total_micros() as u64;
    let jitter = config.random_seed.rotate_left(17);
    let mut iface = Interface::new(config, &mut device, now());

    let mut packet_buf = vec![0u8; 1500];
    let mut socket = dhcpv4::Socket::new();
    socket.set_parameter_request_list(&PARAMETER_REQUEST_LIST);
    socket.set_receive_packet_buffer(&mut packet_buf);
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(socket);

    let deadline = StdInstant::now() + timeout;
    loop {
        let ts = now();
        // The next DISCOVER (if this poll sends one) waits according to how many went before.
        let mut retry = dhcpv4::RetryConfig::default();
        retry.discover_timeout = discover_backoff(sent.get(), jitter.rotate_left(sent.get())).into();
        retry.initial_request_timeout = REQUEST_TIMEOUT.into();
        sockets.get_mut::<dhcpv4::Socket>(handle).set_retry_config(retry);
        iface.poll(ts, &mut device, &mut sockets);
        if let Some(dhcpv4::Event::Configured(cfg)) = sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            let extras = cfg
                .packet
                .map(|p| parse_extras(p.options().map(|o| (o.kind, o.data))))
                .unwrap_or_default();
            return Ok(Lease {
                address: cfg.address.address(),
                prefix_len: cfg.address.prefix_len(),
                router: cfg.router,
                dns: cfg.dns_servers.iter().copied().collect(),
                server: cfg.server.address,
                lease_secs: extras.lease_secs,
                renew_secs: extras.renew_secs,
                rebind_secs: extras.rebind_secs,
                broker: extras.broker,
            });
        }
        let left = deadline.saturating_duration_since(StdInstant::now());
        if left.is_zero() {
            anyhow::bail!("no DHCP answer on {ifname} within {timeout:?}");
        }
        let wait = iface.poll_delay(ts, &sockets).map(Duration::from).unwrap_or(left).min(left);
        phy_wait(device.raw.as_raw_fd(), Some(wait.min(Duration::from_millis(500)).into()))
            .with_context(|| format!("waiting for packets on {ifname}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_option_as_text_or_bytes() {
        let text: &[u8] = b"10.0.0.1:7000";
        let bin: &[u8] = &[10, 0, 0, 2, 0x1b, 0x58];
        let lease: &[u8] = &[0, 0, 0x0e, 0x10];
        let t1: &[u8] = &[0, 0, 0, 10];
        let t2: &[u8] = &[0, 0, 0, 20];
        let e = parse_extras([(51u8, lease), (58u8, t1), (59u8, t2), (224u8, text)].into_iter());
        assert_eq!(e.lease_secs, Some(3600));
        assert_eq!((e.renew_secs, e.rebind_secs), (Some(10), Some(20)));
        assert_eq!(e.broker, Some("10.0.0.1:7000".parse().unwrap()));
        let e = parse_extras([(224u8, bin)].into_iter());
        assert_eq!(e.broker, Some("10.0.0.2:7000".parse().unwrap()));
    }

    #[test]
    fn malformed_options_are_ignored() {
        let bad: &[u8] = b"not-an-address";
        let short: &[u8] = &[1, 2];
        let e = parse_extras([(224u8, bad), (51u8, short), (58u8, short), (59u8, bad), (12u8, bad)].into_iter());
        assert_eq!(e, Extras::default());
    }

    #[test]
    fn discover_retransmissions_back_off_from_four_to_sixteen_seconds() {
        let ms = |n, j| discover_backoff(n, j).as_millis();
        assert_eq!((ms(0, 0), ms(1, 0), ms(2, 0), ms(3, 0), ms(9, 0)), (4000, 8000, 16000, 16000, 16000));
        for n in 0..6 {
            let (lo, hi) = (discover_backoff(n, 0), discover_backoff(n, 999));
            assert!(hi > lo && hi <= lo + lo / 8, "{n}: {lo:?} {hi:?}");
        }
    }

    #[test]
    fn nul_terminated_text_is_accepted() {
        let text: &[u8] = b"\"192.0.2.9:7000\"\0";
        assert_eq!(parse_extras([(224u8, text)].into_iter()).broker, Some("192.0.2.9:7000".parse().unwrap()));
    }
}
