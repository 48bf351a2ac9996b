//! The ping check's I/O: ICMP echo requests to addresses about to be offered, and the wait for
//! their replies, on a raw ICMP socket bound to the boot interface.
//!
//! A raw socket rather than an unprivileged ping socket: the latter needs
//! `net.ipv4.ping_group_range` to include the server's group, which a fresh network namespace
//! does not, while the server runs as root anyway (it binds port 67). A raw socket sees every
//! ICMP message of the host, so replies are matched on source, identifier and sequence.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::Context;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

const PAYLOAD: &[u8] = b"bootserver dhcp ping check";

/// An ICMP echo request (without IP header; the kernel adds it).
pub(crate) fn echo_request(ident: u16, seq_no: u16) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest { ident, seq_no, data: PAYLOAD };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf), &ChecksumCapabilities::default());
    buf
}

/// Source, identifier and sequence of an echo reply as a raw socket delivers it (with its IPv4
/// header); None for anything else or anything malformed.
pub(crate) fn echo_reply(packet: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).ok()? {
        Icmpv4Repr::EchoReply { ident, seq_no, .. } => Some((ip.src_addr(), ident, seq_no)),
        _ => None,
    }
}

struct Outstanding {
    ip: Ipv4Addr,
    seq: u16,
    deadline: Instant,
}

/// Sends echo requests and reports, per address, whether a reply came before the timeout.
pub(crate) struct Pinger {
    sock: AsyncFd<Socket>,
    timeout: Duration,
    ident: u16,
    seq: u16,
    outstanding: Vec<Outstanding>,
}

impl Pinger {
    pub(crate) fn open(interface: &str, timeout: Duration) -> anyhow::Result<Pinger> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).context("raw ICMP socket")?;
        s.bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("binding the ICMP socket to interface {interface}"))?;
        s.set_nonblocking(true)?;
        // SAFETY: the AsyncFd takes the socket by value and owns its descriptor until dropped.
        let sock = unsafe { AsyncFd::register(s) };
        let sock = sock.map_err(std::io::Error::from).context("registering the ICMP socket")?;
        Ok(Pinger { sock, timeout, ident: rand::random(), seq: 0, outstanding: Vec::new() })
    }

    /// Sends one echo request to `ip`; its outcome comes from [`Pinger::next`].
    pub(crate) fn start(&mut self, ip: Ipv4Addr) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let to = SockAddr::from(SocketAddrV4::new(ip, 0));
        self.sock.get_ref().send_to(&echo_request(self.ident, self.seq), &to)?;
        let deadline = Instant::now() + self.timeout;
        self.outstanding.push(Outstanding { ip, seq: self.seq, deadline });
        Ok(())
    }

    /// Waits for the next outcome: `(ip, true)` when `ip` replied, `(ip, false)` when its
    /// timeout passed first. Pends forever with nothing outstanding. Cancel-safe: an outcome
    /// is taken off the list only when it is returned.
    pub(crate) async fn next(&mut self) -> anyhow::Result<(Ipv4Addr, bool)> {
        let mut buf = [0u8; 1500];
        loop {
            let first = self.outstanding.iter().map(|o| o.deadline).min();
            let expired = async {
                match first {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = expired => {
                    let now = Instant::now();
                    if let Some(i) = self.outstanding.iter().position(|o| o.deadline <= now) {
                        return Ok((self.outstanding.remove(i).ip, false));
                    }
                }
                guard = self.sock.readable() => {
                    let mut guard = guard.context("polling the ICMP socket")?;
                    let n = match guard.try_io(|s| s.get_ref().read(&mut buf)) {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => {
                            log::debug!("dhcp: ping check: receiving: {e}");
                            continue;
                        }
                        Err(_would_block) => continue,
                    };
                    let Some((from, ident, seq)) = echo_reply(&buf[..n]) else { continue };
                    let hit = self.outstanding.iter().position(|o| o.ip == from && o.seq == seq);
                    if let (true, Some(i)) = (ident == self.ident, hit) {
                        return Ok((self.outstanding.remove(i).ip, true));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpProtocol, Ipv4Repr};

    /// An echo reply from `src` as the kernel hands it to a raw socket.
    fn reply_packet(src: Ipv4Addr, ident: u16, seq_no: u16) -> Vec<u8> {
        let icmp = Icmpv4Repr::EchoReply { ident, seq_no, data: PAYLOAD };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: Ipv4Addr::new(10, 0, 0, 1),
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ip.buffer_len() + icmp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(&mut buf);
        ip.emit(&mut p, &caps);
        icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &caps);
        buf
    }

    #[test]
    fn echo_request_layout() {
        let b = echo_request(0x1234, 7);
        assert_eq!(&b[..2], &[8, 0], "type 8 (echo request), code 0");
        assert_eq!(&b[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(&b[8..], PAYLOAD);
        // The Internet checksum over the whole message folds to zero.
        let sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
    }

    #[test]
    fn recognizes_echo_replies_only() {
        let src = Ipv4Addr::new(10, 0, 0, 100);
        let r = reply_packet(src, 0xbeef, 3);
        assert_eq!(echo_reply(&r), Some((src, 0xbeef, 3)));
        // Our own request looped back (type 8) is no reply.
        let mut req = r.clone();
        req[20] = 8;
        assert_eq!(echo_reply(&req), None);
        // Bad checksum, truncation, garbage.
        let mut bad = r.clone();
        bad[30] ^= 1;
        assert_eq!(echo_reply(&bad), None);
        for n in 0..r.len() {
            assert_eq!(echo_reply(&r[..n]), None, "{n} bytes");
        }
        assert_eq!(echo_reply(&[0x45; 60]), None);
    }
}
