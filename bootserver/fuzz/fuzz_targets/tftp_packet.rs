//! Any datagram: the TFTP parser must return, never panic, and whatever it accepts must drive
//! option negotiation and the sender's state machine without panicking either.
#![no_main]

use bootserver::tftp::options::{negotiate, Limits};
use bootserver::tftp::packet::{parse, Packet};
use bootserver::tftp::transfer::{Params, Transfer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Packet::Rrq(req)) | Ok(Packet::Wrq(req)) => {
            let n = negotiate(&req, Limits { max_blksize: 1468, max_windowsize: 16, max_timeout_secs: 10, max_window_bytes: 256 << 10 }, 4096);
            let _ = n.oack();
        }
        Ok(Packet::Oack(opts)) => {
            for o in opts {
                let _ = o.number();
            }
        }
        _ => {}
    }
    // The same bytes as a client's reply in the middle of a windowed transfer.
    let file = [0u8; 3000];
    let p = Params {
        blksize: 512,
        windowsize: 4,
        timeout: std::time::Duration::from_secs(1),
        max_timeout: std::time::Duration::from_secs(4),
        retries: 2,
        retries_before_ack: 1,
    };
    let mut t = Transfer::new(&file[..], p, None);
    let _ = t.start();
    let _ = t.on_packet(data);
    let _ = t.outgoing().count();
});
