//! Feeds arbitrary server messages to the agent's DHCP option parsing: the options of any
//! packet as the first lease reads them (lease times, the broker option), and the renewal
//! state machine's handling of an answer (ACK with its options, NAK with its message). The
//! transaction ID and hardware address of the message are set to the ones the renewal waits
//! for, so that the fuzzer's bytes reach the option parsing instead of being dropped as
//! someone else's. Whatever the bytes, the result is a lease, a loss or nothing, never a panic.

#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::DhcpPacket;

// The agent is a binary crate; its DHCP modules are pure enough to be built here as they are
// (`renew` reaches `dhcp` as `super::dhcp`, which is this crate's root).
#[allow(dead_code)]
#[path = "../../src/agent/net/dhcp.rs"]
mod dhcp;
#[allow(dead_code)]
#[path = "../../src/agent/net/renew.rs"]
mod renew;

use dhcp::{parse_extras, Lease};
use renew::{Keeper, Output};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
/// Offsets of the transaction ID and the client hardware address in a BOOTP message.
const XID: std::ops::Range<usize> = 4..8;
const CHADDR: std::ops::Range<usize> = 28..34;

fn lease() -> Lease {
    Lease {
        address: Ipv4Addr::new(10, 0, 0, 100),
        prefix_len: 24,
        router: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 1)],
        server: Ipv4Addr::new(10, 0, 0, 1),
        lease_secs: Some(3600),
        renew_secs: None,
        rebind_secs: None,
        broker: None,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = DhcpPacket::new_checked(data) {
        let _ = parse_extras(p.options().map(|o| (o.kind, o.data)));
    }
    // T1 has passed: the keeper sends its REQUEST and waits for the answer to it.
    let start = Instant::now();
    let mut keeper = Keeper::new(MAC, lease(), start, 1);
    let t1 = start + Duration::from_secs(1800);
    let Output::Send { packet, .. } = keeper.poll(t1) else {
        panic!("no REQUEST at T1");
    };
    let mut message = data.to_vec();
    if message.len() >= CHADDR.end {
        message[XID].copy_from_slice(&packet[XID]);
        message[CHADDR].copy_from_slice(&MAC);
    }
    let _ = keeper.receive(t1 + Duration::from_millis(1), &message);
    let _ = keeper.poll(t1 + Duration::from_secs(1));
});
