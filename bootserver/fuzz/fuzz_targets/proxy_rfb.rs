//! Any bytes as a VM's stream (framing, ZRLE/Zlib re-compression) and as a viewer's stream
//! through the VNC proxy's RFB parser: see `bootserver::broker::proxy::fuzz::rfb_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bootserver::broker::proxy::fuzz::rfb_stream(data);
});
