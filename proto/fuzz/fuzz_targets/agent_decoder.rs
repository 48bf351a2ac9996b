//! Feeds arbitrary bytes to both directions' decoders, split into chunks at positions taken
//! from the input itself, and checks the decoder's promises: no panic, bounded buffering, and
//! nothing but `Stopped` after a fatal error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::agent::{AgentMessage, BrokerMessage, DecodeError, Decoder, Message, HEADER, MAX_FRAME};

fn run<M: Message + std::fmt::Debug>(data: &[u8]) {
    let (cuts, stream) = data.split_at(data.len().min(4));
    let mut d = Decoder::<M>::new();
    let mut rest = stream;
    let mut fatal = false;
    for &c in cuts.iter().chain(std::iter::repeat(&255)) {
        if rest.is_empty() {
            break;
        }
        let n = (usize::from(c) + 1).min(rest.len());
        for r in d.feed(&rest[..n]) {
            if fatal {
                assert_eq!(r.unwrap_err(), DecodeError::Stopped);
            } else if let Err(e) = r {
                fatal = e.is_fatal();
            }
        }
        assert!(d.buffered() <= HEADER + MAX_FRAME);
        rest = &rest[n..];
    }
    let _ = d.finish();
}

fuzz_target!(|data: &[u8]| {
    run::<AgentMessage>(data);
    run::<BrokerMessage>(data);
});
