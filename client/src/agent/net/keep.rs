//! The I/O around [`super::renew::Keeper`]: a kernel UDP socket for its messages, netlink for
//! what a renewal changes, and, when the lease is lost, removing the address and leasing anew.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

use super::dhcp::{self, Lease};
use super::netlink;
use super::renew::{Keeper, Lost, Output, Phase, Reply, Timers, CLIENT_PORT};

/// How long one DISCOVER round may take after the lease is lost; rounds repeat until one works.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Keeps `lease` (applied to `ifname` already) for as long as the process runs: renews at T1,
/// rebinds at T2, and after a DHCPNAK or expiry removes the address and leases anew. Returns
/// only for a lease without end.
pub(crate) fn keep(ifname: &str, mac: [u8; 6], mut lease: Lease, resolv: &Path) {
    loop {
        if Timers::for_lease(lease.lease_secs, lease.renew_secs, lease.rebind_secs).is_none() {
            log::info!("{ifname}: the lease of {} has no end; not renewing it", lease.address);
            return;
        }
        let lost = hold(ifname, mac, lease.clone(), resolv);
        log::warn!(
            "{ifname}: {lost}; removing {}/{} and starting over with DHCPDISCOVER",
            lease.address,
            lease.prefix_len
        );
        if let Err(e) = netlink::remove(ifname, &lease) {
            log::warn!("{e:#}");
        }
        lease = reacquire(ifname, mac, resolv);
    }
}

fn reacquire(ifname: &str, mac: [u8; 6], resolv: &Path) -> Lease {
    loop {
        let got = dhcp::acquire(ifname, mac, ACQUIRE_TIMEOUT)
            .and_then(|l| netlink::apply(ifname, &l, resolv).map(|()| l));
        match got {
            Ok(l) => {
                log::info!("{ifname}: new lease {}/{} via {:?} from {}", l.address, l.prefix_len, l.router, l.server);
                return l;
            }
            Err(e) => {
                log::warn!("{ifname}: {e:#}; trying again");
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// Runs the keeper on one lease until it is lost.
fn hold(ifname: &str, mac: [u8; 6], lease: Lease, resolv: &Path) -> Lost {
    let mut seed = [0u8; 8];
    seed[..6].copy_from_slice(&mac);
    let clock = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut keeper = Keeper::new(mac, lease, Instant::now(), u64::from_le_bytes(seed) ^ clock);
    // Open only while renewing or rebinding: port 68 has nothing to hear in between.
    let mut sock: Option<UdpSocket> = None;
    let mut buf = vec![0u8; 1500];
    loop {
        let now = Instant::now();
        match keeper.poll(now) {
            Output::Lost(lost) => return lost,
            Output::Send { to, packet } => {
                if sock.is_none() {
                    sock = open_socket(ifname).map_err(|e| log::warn!("{e:#}")).ok();
                }
                if let Some(s) = &sock {
                    match s.send_to(&packet, to) {
                        Ok(_) => log::debug!("{ifname}: DHCPREQUEST sent to {to}"),
                        Err(e) => log::warn!("{ifname}: sending a DHCPREQUEST to {to}: {e}"),
                    }
                }
            }
            Output::Wait(until) => {
                let wait = until.saturating_duration_since(now);
                let s = match (&sock, keeper.phase()) {
                    (Some(s), Phase::Renewing | Phase::Rebinding) => s,
                    _ => {
                        sock = None;
                        std::thread::sleep(wait);
                        continue;
                    }
                };
                // A zero timeout would mean "block forever".
                if let Err(e) = s.set_read_timeout(Some(wait.max(Duration::from_millis(1)))) {
                    log::warn!("{ifname}: {e}");
                }
                let n = match s.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        log::debug!("{ifname}: {n} bytes from {from}");
                        n
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(e) => {
                        log::warn!("{ifname}: receiving on port {CLIENT_PORT}: {e}");
                        std::thread::sleep(wait.min(Duration::from_secs(1)));
                        continue;
                    }
                };
                let before = keeper.lease().clone();
                match keeper.receive(Instant::now(), &buf[..n]) {
                    None => {}
                    Some(Reply::Lost(lost)) => return lost,
                    Some(Reply::Renewed(l))
                        if (l.prefix_len, l.router, &l.dns) != (before.prefix_len, before.router, &before.dns) =>
                    {
                        log::info!("{ifname}: the renewed lease changes the network settings; applying them");
                        if let Err(e) = netlink::apply(ifname, &l, resolv) {
                            log::warn!("{e:#}");
                        }
                    }
                    Some(Reply::Renewed(_)) => {}
                }
            }
        }
    }
}

/// The socket for RENEWING and REBINDING.
///
/// Before the address is up, [`dhcp::acquire`] works on a packet socket: the kernel would drop
/// an OFFER or ACK sent to an address it does not hold yet. Once the address is up it is the
/// other way round: RENEWING must unicast from that address to the server, which takes ARP,
/// routing and checksums that the kernel does anyway, and an answer to our address that no
/// kernel socket takes is refused with ICMP port unreachable. So: a kernel UDP socket on port
/// 68, limited to the interface (SO_BINDTODEVICE). It is bound to 0.0.0.0 rather than to the
/// address because a server that refuses the renewal broadcasts its DHCPNAK (RFC 2131 section
/// 4.1), which a socket bound to the unicast address would never see; SO_BROADCAST lets
/// REBINDING send to 255.255.255.255 (out of this interface, from its address).
fn open_socket(ifname: &str) -> anyhow::Result<UdpSocket> {
    let ctx = || format!("opening UDP port {CLIENT_PORT} on {ifname} for DHCP renewal");
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).with_context(ctx)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).with_context(ctx)?;
    setsockopt(&fd, sockopt::Broadcast, &true).with_context(ctx)?;
    setsockopt(&fd, sockopt::BindToDevice, &ifname.into()).with_context(ctx)?;
    let any = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    bind(fd.as_raw_fd(), &SockaddrIn::from(any)).with_context(ctx)?;
    Ok(UdpSocket::from(fd))
}
