//! A request's path and Range header: percent-decoding and range parsing must never panic,
//! and what they return must hold for the file it names. The first 8 bytes are the file's
//! length; the rest is the header value, and also the path.
#![no_main]

use bootserver::http::percent_decode;
use bootserver::http::range::{parse, RangeRequest};
use libfuzzer_sys::fuzz_target;

/// What a strict decoder says: every `%` starts exactly two hex digits.
fn well_formed(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if !s.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<8>() else { return };
    let len = u64::from_be_bytes(*len);
    let Ok(text) = std::str::from_utf8(rest) else { return };

    match parse(Some(text), len) {
        RangeRequest::Partial { start, end } => {
            assert!(start <= end && end < len, "{text:?} on {len} bytes gave {start}-{end}");
        }
        RangeRequest::Unsatisfiable | RangeRequest::Full => {}
    }

    match percent_decode(text) {
        Some(d) => {
            assert!(well_formed(text.as_bytes()), "{text:?} decoded though malformed");
            assert!(d.len() <= text.len());
            if !text.contains('%') {
                assert_eq!(d, text.as_bytes());
            }
        }
        None => assert!(!well_formed(text.as_bytes()), "{text:?} refused though well formed"),
    }
    // Any bytes, escaped, come back unchanged.
    let escaped: String = rest.iter().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(percent_decode(&escaped).as_deref(), Some(rest));
});
