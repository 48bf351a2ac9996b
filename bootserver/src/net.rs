//! Sockets bound to the one interface the boot server serves, and the limits every TCP
//! service applies to its connections.

pub mod limits;

use std::net::SocketAddr;

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A TCP listener on `addr`, bound to `interface` with SO_BINDTODEVICE so that nothing arriving
/// on another interface reaches it.
pub fn tcp_listener(interface: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding to interface {interface}"))?;
    s.bind(&SockAddr::from(addr)).with_context(|| format!("binding {addr} on {interface}"))?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(s.into())?)
}

/// A UDP socket on `addr`, bound to `interface`. `broadcast` allows sending to 255.255.255.255.
pub fn udp_socket(
    interface: &str,
    addr: SocketAddr,
    broadcast: bool,
) -> anyhow::Result<tokio::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(broadcast)?;
    s.bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding to interface {interface}"))?;
    s.bind(&SockAddr::from(addr)).with_context(|| format!("binding udp {addr} on {interface}"))?;
    s.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(s.into())?)
}
