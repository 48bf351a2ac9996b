//! Arbitrary datagrams through the DHCP decision core (normal and proxyDHCP, ports 67 and
//! 4011). Run with `cargo +nightly fuzz run dhcp_packet` in bootserver/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bootserver::dhcp::fuzz_one(data);
});
