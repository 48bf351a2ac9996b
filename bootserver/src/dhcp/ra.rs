//! ICMPv6 Router Advertisements on the boot interface.
//!
//! iPXE waits for IPv6 autoconfiguration after it opens the NIC. An advertisement with M=0 and
//! O=0 tells it no DHCPv6 is coming, which ends that wait at once; with no prefix and a router
//! lifetime of 0 nobody configures an address or routes through this server because of it.
//!
//! The message is written by hand: it is a fixed 24-byte layout whose checksum the kernel fills
//! in for raw ICMPv6 sockets, and smoltcp's NDISC types would need its `proto-ipv6` feature,
//! which feature unification would switch on for every smoltcp user in the workspace.

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const OPT_SOURCE_LL_ADDR: u8 = 1;
/// Answer solicitations at once, but not more often than this.
const MIN_GAP: Duration = Duration::from_secs(1);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The advertisement (RFC 4861 4.2): hop limit unspecified, M=0 O=0, router lifetime 0,
/// reachable and retransmit times unspecified, and our link-layer address when known.
pub(crate) fn advertisement(mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut m = vec![ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if let Some(mac) = mac {
        m.extend_from_slice(&[OPT_SOURCE_LL_ADDR, 1]);
        m.extend_from_slice(&mac);
    }
    m
}

/// Whether an ICMPv6 message (as a raw socket delivers it, without the IPv6 header) is a
/// Router Solicitation.
pub(crate) fn is_solicitation(msg: &[u8]) -> bool {
    msg.len() >= 8 && msg[0] == ROUTER_SOLICITATION && msg[1] == 0
}

fn interface_mac(interface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

fn open(interface: &str, index: u32) -> anyhow::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).context("raw ICMPv6 socket")?;
    s.bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding to interface {interface}"))?;
    // Receivers drop neighbour discovery messages with any other hop limit (RFC 4861 6.1.2).
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&ALL_ROUTERS, index).context("joining ff02::2")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Advertises every `interval` and on each solicitation. Never returns an error that would
/// stop the other services: without IPv6 on the interface it logs once and idles.
pub async fn run(interface: String, interval: Duration) -> anyhow::Result<()> {
    let index = match nix::net::if_::if_nametoindex(interface.as_str()) {
        Ok(i) => i,
        Err(e) => {
            log::warn!("ra: interface {interface}: {e}; no router advertisements");
            return std::future::pending().await;
        }
    };
    let registered = open(&interface, index).and_then(|s| {
        // SAFETY: the AsyncFd takes the socket by value and owns its descriptor until dropped.
        let fd = unsafe { AsyncFd::register(s) };
        fd.map_err(|e| anyhow::Error::from(std::io::Error::from(e)).context("registering the socket"))
    });
    let sock = match registered {
        Ok(s) => s,
        Err(e) => {
            log::warn!("ra: {e:#}; no router advertisements on {interface}");
            return std::future::pending().await;
        }
    };
    let ra = advertisement(interface_mac(&interface));
    let dest = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    log::info!("ra: advertising on {interface} every {} s and on solicitation", interval.as_secs());
    let mut tick = tokio::time::interval(interval);
    let mut last: Option<Instant> = None;
    let mut failing = false;
    let mut buf = [0u8; 1500];
    loop {
        let solicited = tokio::select! {
            _ = tick.tick() => false,
            guard = sock.readable() => {
                let mut guard = guard.context("ra: polling the socket")?;
                match guard.try_io(|s| s.get_ref().read(&mut buf)) {
                    Ok(Ok(n)) if is_solicitation(&buf[..n]) => true,
                    Ok(Ok(_)) | Err(_) => continue,
                    Ok(Err(e)) => { log::debug!("ra: receiving: {e}"); continue }
                }
            }
        };
        if solicited && last.is_some_and(|t| t.elapsed() < MIN_GAP) {
            continue;
        }
        match sock.get_ref().send_to(&ra, &dest) {
            Ok(_) => {
                if failing {
                    log::info!("ra: sending on {interface} works again");
                }
                failing = false;
                last = Some(Instant::now());
                log::debug!("ra: sent{}", if solicited { " (solicited)" } else { "" });
            }
            // Typical before the interface has its link-local address.
            Err(e) if !failing => {
                log::warn!("ra: sending on {interface}: {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_layout() {
        let m = advertisement(Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(m.len(), 24);
        assert_eq!(m[0], 134);
        // No M/O flags, router lifetime 0: nobody routes through us or asks DHCPv6.
        assert_eq!(&m[4..8], &[0, 0, 0, 0]);
        assert_eq!(&m[16..24], &[1, 1, 2, 0, 0, 0, 0, 1]);
        assert_eq!(advertisement(None).len(), 16);
    }

    #[test]
    fn recognizes_solicitations() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
    }
}
