//! Applies a lease to the kernel: link up, address, default route (rtnetlink), and DNS
//! servers (`/etc/resolv.conf`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::dhcp::Lease;

/// A route netlink socket that sends one request at a time and waits for its ACK.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub(crate) fn open() -> anyhow::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a route netlink socket")?;
        sock.bind_auto().context("binding the route netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0)).context("connecting the route netlink socket")?;
        Ok(Rtnl { sock, seq: 0 })
    }

    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    pub(crate) fn link_up(&mut self, index: u32) -> std::io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// `ip addr replace ADDR/LEN brd + dev INDEX`.
    pub(crate) fn set_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> std::io::Result<()> {
        let mut msg = address_message(index, addr, prefix_len);
        let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix_len.min(32))) };
        let broadcast = Ipv4Addr::from(u32::from(addr) | !mask);
        msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        self.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// `ip addr del ADDR/LEN dev INDEX`; routes through the interface go with its last address.
    pub(crate) fn del_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> std::io::Result<()> {
        self.request(RouteNetlinkMessage::DelAddress(address_message(index, addr, prefix_len)), 0)
    }

    /// `ip route replace default via GATEWAY dev INDEX proto dhcp`.
    pub(crate) fn set_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> std::io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Dhcp;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }
}

pub(crate) fn if_index(ifname: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no network interface {ifname}"))
}

/// Brings up `lo` and `ifname`.
pub(crate) fn bring_up(ifname: &str) -> anyhow::Result<()> {
    let mut rtnl = Rtnl::open()?;
    rtnl.link_up(if_index("lo")?).context("bringing up lo")?;
    rtnl.link_up(if_index(ifname)?).with_context(|| format!("bringing up {ifname}"))?;
    Ok(())
}

/// Gives the kernel the lease's address and route, and writes the DNS servers to `resolv`.
pub(crate) fn apply(ifname: &str, lease: &Lease, resolv: &Path) -> anyhow::Result<()> {
    let index = if_index(ifname)?;
    let mut rtnl = Rtnl::open()?;
    rtnl.set_address(index, lease.address, lease.prefix_len)
        .with_context(|| format!("adding {}/{} to {ifname}", lease.address, lease.prefix_len))?;
    if let Some(gw) = lease.router {
        rtnl.set_default_route(index, gw).with_context(|| format!("adding default route via {gw} on {ifname}"))?;
    }
    if !lease.dns.is_empty() {
        if let Some(parent) = resolv.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(resolv, resolv_conf(&lease.dns)).with_context(|| format!("writing {}", resolv.display()))?;
    }
    Ok(())
}

/// ADDR/LEN on interface INDEX, as both adding and deleting name it.
fn address_message(index: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
    msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
    msg
}

/// Takes the lease's address off `ifname` (a lost lease must not be used any more).
pub(crate) fn remove(ifname: &str, lease: &Lease) -> anyhow::Result<()> {
    let index = if_index(ifname)?;
    Rtnl::open()?
        .del_address(index, lease.address, lease.prefix_len)
        .with_context(|| format!("removing {}/{} from {ifname}", lease.address, lease.prefix_len))
}

pub(crate) fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by the thin-client agent from its DHCP lease\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_servers() {
        let s = resolv_conf(&[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert!(s.ends_with("nameserver 10.0.0.1\nnameserver 10.0.0.2\n"));
    }
}
