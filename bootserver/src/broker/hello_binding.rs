//! Binds an agent's hello to the address it comes from. The MAC in a hello is only what the
//! peer says, and anyone on the LAN sees every PC's MAC in its DHCP broadcasts: without a
//! check, one hello with PC 1's MAC would take PC 1's desktop. So a hello is taken only when
//! its MAC is the one the network itself ties to the connection's source address:
//!
//! * where this process hands out the addresses, the MAC must hold the DHCP lease of that
//!   address (read from the DHCP service's table in memory, [`LeaseView`]);
//! * where the leases are someone else's (proxyDHCP, or the DHCP service turned off), the MAC
//!   must be the one that answers ARP for the address: the kernel's neighbour table, read
//!   after a datagram to the address has made the kernel resolve it.
//!
//! What it does not stop: a device that takes PC 1's MAC *and* its address (while PC 1 is off,
//! or by fighting PC 1 over ARP) passes both checks. A PC has no secret of its own to prove
//! who it is; see the README's "Trust" section.

use std::io;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use proto::agent::MacAddr;

use super::registry::now_secs;
use crate::dhcp::LeaseView;

/// Longest wait for the kernel to resolve the peer's address in proxyDHCP mode.
const ARP_TIMEOUT: Duration = Duration::from_millis(500);
/// The kernel's neighbour table, as text, of the process's network namespace.
const ARP_TABLE: &str = "/proc/net/arp";

/// How hellos are tied to addresses.
#[derive(Debug, Clone)]
pub enum HelloBinding {
    /// This process's DHCP service hands out the addresses: the MAC must hold the lease.
    Leases(LeaseView),
    /// The addresses are someone else's: the MAC must answer ARP for the address on `interface`.
    Arp { interface: String, timeout: Duration },
    /// No check (`hello_binding = false`): for agents behind NAT or a router, where the
    /// source address is not the PC's.
    Off,
}

/// What the network says about the source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A bound lease of the address, held by this MAC.
    Lease(Option<MacAddr>),
    /// The MAC that answered ARP for the address (`None`: nobody within the timeout).
    Arp(Option<MacAddr>),
}

/// Why a hello was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// For the agent's screen: says what failed, not who holds the address.
    pub reason: String,
    /// For the log: the claimed MAC, the address, and the MAC the network has for it.
    pub detail: String,
}

/// The decision, without I/O: a hello from `ip` that claims `claimed`, given `evidence`.
pub fn judge(claimed: MacAddr, ip: Ipv4Addr, evidence: Evidence) -> Result<(), Refusal> {
    let (found, how) = match evidence {
        Evidence::Lease(m) => (m, "holds the DHCP lease of"),
        Evidence::Arp(m) => (m, "answers ARP for"),
    };
    match found {
        Some(m) if m == claimed => Ok(()),
        Some(m) => Err(Refusal {
            reason: format!("the address {ip} does not belong to {claimed}"),
            detail: format!("hello claims {claimed}, but {m} {how} {ip}"),
        }),
        None => Err(Refusal {
            reason: format!("the address {ip} does not belong to {claimed}"),
            detail: match evidence {
                Evidence::Lease(_) => format!("hello claims {claimed}, but no MAC holds a lease of {ip}"),
                Evidence::Arp(_) => format!("hello claims {claimed}, but no MAC answers ARP for {ip}"),
            },
        }),
    }
}

impl HelloBinding {
    /// The binding `serve` applies: leases where this process's DHCP service hands them out,
    /// ARP where it does not (proxyDHCP, or no DHCP service), nothing with `hello_binding = false`.
    pub fn of(settings: &crate::config::Settings, leases: LeaseView) -> HelloBinding {
        if !settings.hello_binding {
            HelloBinding::Off
        } else if settings.enable_dhcp && !settings.proxy_dhcp {
            HelloBinding::Leases(leases)
        } else {
            HelloBinding::Arp { interface: settings.interface.clone(), timeout: ARP_TIMEOUT }
        }
    }

    /// Checks a hello that claims `claimed` on a connection from `peer`. The ARP lookup runs on
    /// a blocking thread: it sleeps while the kernel resolves.
    pub async fn check(&self, claimed: MacAddr, peer: IpAddr) -> Result<(), Refusal> {
        let ip = match peer {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(ip) => ip,
                None if matches!(self, HelloBinding::Off) => return Ok(()),
                None => {
                    return Err(Refusal {
                        reason: "agents must connect over IPv4".into(),
                        detail: format!("hello claims {claimed} from the IPv6 address {v6}: neither a lease nor ARP can vouch for it"),
                    })
                }
            },
        };
        let evidence = match self {
            HelloBinding::Off => return Ok(()),
            HelloBinding::Leases(view) => Evidence::Lease(view.holder(ip, now_secs())),
            HelloBinding::Arp { interface, timeout } => {
                let (interface, timeout) = (interface.clone(), *timeout);
                let found = tokio::task::spawn_blocking(move || arp_lookup(ip, &interface, timeout)).await;
                match found {
                    Ok(Ok(m)) => Evidence::Arp(m),
                    Ok(Err(e)) => {
                        log::error!("broker: reading {ARP_TABLE} for {ip}: {e}");
                        Evidence::Arp(None)
                    }
                    Err(e) => {
                        log::error!("broker: ARP lookup of {ip}: {e}");
                        Evidence::Arp(None)
                    }
                }
            }
        };
        judge(claimed, ip, evidence)
    }
}

/// The MAC of `ip` on `interface` in the kernel's neighbour table, after a datagram to the
/// address has made the kernel resolve it (or refresh what it has); `None` if no complete
/// entry shows within `timeout`.
pub fn arp_lookup(ip: Ipv4Addr, interface: &str, timeout: Duration) -> io::Result<Option<MacAddr>> {
    let deadline = Instant::now() + timeout;
    // The discard port: the datagram only has to make the kernel need the neighbour.
    if let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(&[], (ip, 9));
    }
    loop {
        if let Some(mac) = arp_entry(&std::fs::read_to_string(ARP_TABLE)?, ip, interface) {
            return Ok(Some(mac));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The complete entry of `ip` on `interface` in `/proc/net/arp`'s text.
pub fn arp_entry(table: &str, ip: Ipv4Addr, interface: &str) -> Option<MacAddr> {
    // Columns: IP address, HW type, Flags, HW address, Mask, Device.
    const ATF_COM: u32 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _, flags, hw, _, dev] = f[..] else { return None };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        (addr.parse::<Ipv4Addr>() == Ok(ip) && dev == interface && flags & ATF_COM != 0).then(|| hw.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 9]);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    #[test]
    fn only_the_holder_of_the_address_passes() {
        assert_eq!(judge(PC, IP, Evidence::Lease(Some(PC))), Ok(()));
        assert_eq!(judge(PC, IP, Evidence::Arp(Some(PC))), Ok(()));
        let r = judge(PC, IP, Evidence::Lease(Some(OTHER))).unwrap_err();
        // The log names both MACs and the address; the agent is not told who holds it.
        assert_eq!(r.detail, "hello claims 52:54:00:00:00:01, but 02:00:00:00:00:09 holds the DHCP lease of 10.0.0.100");
        assert!(!r.reason.contains("02:00:00:00:00:09"), "{}", r.reason);
        let r = judge(PC, IP, Evidence::Arp(Some(OTHER))).unwrap_err();
        assert!(r.detail.contains("02:00:00:00:00:09 answers ARP for 10.0.0.100"), "{}", r.detail);
        assert!(judge(PC, IP, Evidence::Lease(None)).unwrap_err().detail.contains("no MAC holds a lease of 10.0.0.100"));
        assert!(judge(PC, IP, Evidence::Arp(None)).unwrap_err().detail.contains("no MAC answers ARP"));
    }

    #[test]
    fn the_neighbour_table_is_read_by_address_device_and_completeness() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                     10.0.0.100       0x1         0x2         52:54:00:00:00:01     *        br0\n\
                     10.0.0.101       0x1         0x0         00:00:00:00:00:00     *        br0\n\
                     10.0.0.102       0x1         0x2         02:00:00:00:00:09     *        eth1\n\
                     garbage line\n";
        assert_eq!(arp_entry(table, IP, "br0"), Some(PC));
        assert_eq!(arp_entry(table, Ipv4Addr::new(10, 0, 0, 101), "br0"), None, "incomplete");
        assert_eq!(arp_entry(table, Ipv4Addr::new(10, 0, 0, 102), "br0"), None, "another device");
        assert_eq!(arp_entry(table, Ipv4Addr::new(10, 0, 0, 103), "br0"), None);
    }

    #[tokio::test]
    async fn leases_decide_and_ipv6_is_refused_unless_off() {
        let view = LeaseView::default();
        let b = HelloBinding::Leases(view);
        // No lease at all in an empty view.
        assert!(b.check(PC, IpAddr::V4(IP)).await.is_err());
        assert!(b.check(PC, "fe80::1".parse().unwrap()).await.is_err());
        assert_eq!(HelloBinding::Off.check(PC, "fe80::1".parse().unwrap()).await, Ok(()));
        assert_eq!(HelloBinding::Off.check(PC, IpAddr::V4(IP)).await, Ok(()));
    }

    #[tokio::test]
    async fn loopback_has_no_neighbour_and_the_wait_is_bounded() {
        let b = HelloBinding::Arp { interface: "lo".into(), timeout: Duration::from_millis(50) };
        let t0 = Instant::now();
        assert!(b.check(PC, "127.0.0.1".parse().unwrap()).await.is_err());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
}
