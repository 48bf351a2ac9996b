//! Any bytes as a viewer's and as a VM's side of the VNC proxy's RFB handshakes: see
//! `bootserver::broker::proxy::fuzz::rfb_handshake`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bootserver::broker::proxy::fuzz::rfb_handshake(data);
});
