//! Option negotiation (RFC 2347): blksize (RFC 2348), tsize and timeout (RFC 2349), windowsize
//! (RFC 7440). Unknown options and options with bad values are left out of the OACK, which
//! RFC 2347 defines as "not accepted": the client then uses the default.

use std::time::Duration;

use super::packet::{Mode, Request, Writer, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE, OP_OACK};

/// What this server grants at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest block size, already lowered to fit the interface MTU.
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Largest `timeout` option accepted, in seconds.
    pub max_timeout_secs: u64,
    /// Bytes a window may hold: the window stays built in memory until it is acknowledged,
    /// so a large block size gets a smaller window (RFC 7440 lets the server lower it).
    pub max_window_bytes: usize,
}

/// The outcome of a negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// Retransmission timeout the client asked for.
    pub timeout: Option<Duration>,
    /// Accepted options in the client's order, as sent back in the OACK.
    pub accepted: Vec<(&'static str, u64)>,
}

impl Negotiated {
    /// The OACK packet, or `None` when no option was accepted (then DATA 1 answers the RRQ).
    pub fn oack(&self) -> Option<Vec<u8>> {
        if self.accepted.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(64);
        let mut w = Writer::new(&mut out, OP_OACK);
        for (name, value) in &self.accepted {
            w = w.option(name, value);
        }
        Some(out)
    }
}

/// Decides which of a read request's options to accept. `file_len` is the size to report for
/// tsize; netascii changes the size on the wire, so tsize is left out for it.
pub fn negotiate(req: &Request<'_>, limits: Limits, file_len: u64) -> Negotiated {
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout: None, accepted: Vec::new() };
    let seen = |name: &'static str, n: &Negotiated| n.accepted.iter().any(|(a, _)| *a == name);
    for opt in req.options() {
        let value = opt.number();
        if opt.is("blksize") && !seen("blksize", &n) {
            // A larger request than allowed is answered with the allowed maximum (RFC 2348).
            let cap = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE) as u64;
            if let Some(v) = value.filter(|&v| v >= MIN_BLKSIZE as u64) {
                n.blksize = v.min(cap) as u16;
                n.accepted.push(("blksize", n.blksize as u64));
            }
        } else if opt.is("windowsize") && !seen("windowsize", &n) {
            let cap = limits.max_windowsize.max(1) as u64;
            if let Some(v) = value.filter(|v| (1..=65535).contains(v)) {
                n.windowsize = v.min(cap) as u16;
                n.accepted.push(("windowsize", n.windowsize as u64));
            }
        } else if opt.is("timeout") && !seen("timeout", &n) {
            // RFC 2349: 1..=255 seconds, and the server may not change it, only refuse it.
            let max = limits.max_timeout_secs.clamp(1, 255);
            if let Some(v) = value.filter(|v| (1..=max).contains(v)) {
                n.timeout = Some(Duration::from_secs(v));
                n.accepted.push(("timeout", v));
            }
        } else if opt.is("tsize") && !seen("tsize", &n) && req.mode == Mode::Octet && value.is_some() {
            n.accepted.push(("tsize", file_len));
        }
    }
    let fits = (limits.max_window_bytes / n.blksize as usize).clamp(1, u16::MAX as usize) as u16;
    if n.windowsize > fits {
        n.windowsize = fits;
        for (name, value) in &mut n.accepted {
            if *name == "windowsize" {
                *value = fits as u64;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::{parse, request_packet, Packet, OP_RRQ};

    const LIMITS: Limits =
        Limits { max_blksize: 1468, max_windowsize: 16, max_timeout_secs: 10, max_window_bytes: 64 * 1024 };

    fn run(mode: Mode, opts: &[(&str, &str)]) -> Negotiated {
        let mut raw = Vec::new();
        request_packet(&mut raw, OP_RRQ, b"f", mode, opts);
        let Ok(Packet::Rrq(r)) = parse(&raw) else { panic!() };
        negotiate(&r, LIMITS, 1000)
    }

    #[test]
    fn no_options_no_oack() {
        let n = run(Mode::Octet, &[]);
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, None));
        assert_eq!(n.oack(), None);
    }

    #[test]
    fn accepts_and_caps() {
        let n = run(
            Mode::Octet,
            &[("BlkSize", "65464"), ("tsize", "0"), ("windowsize", "64"), ("timeout", "3")],
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            n.oack().unwrap(),
            b"\0\x06blksize\x001468\0tsize\x001000\0windowsize\x0016\0timeout\x003\0"
        );
        let n = run(Mode::Octet, &[("blksize", "1024")]);
        assert_eq!(n.blksize, 1024);
    }

    #[test]
    fn bad_values_and_unknown_options_are_ignored() {
        let n = run(
            Mode::Octet,
            &[
                ("blksize", "7"),
                ("windowsize", "0"),
                ("timeout", "256"),
                ("tsize", "x"),
                ("multicast", ""),
                ("rollover", "0"),
            ],
        );
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, None));
        assert_eq!(n.oack(), None);
        let n = run(Mode::Octet, &[("blksize", "abc"), ("blksize", "800"), ("windowsize", "70000")]);
        // The first blksize is bad, a later one is good: it counts.
        assert_eq!((n.blksize, n.windowsize), (800, 1));
        let n = run(Mode::Octet, &[("blksize", "800"), ("blksize", "900")]);
        assert_eq!(n.blksize, 800);
        assert_eq!(n.accepted.len(), 1);
    }

    #[test]
    fn long_timeouts_are_refused() {
        let n = run(Mode::Octet, &[("timeout", "255"), ("blksize", "1024")]);
        assert_eq!(n.timeout, None);
        assert_eq!(n.accepted, [("blksize", 1024)]);
        assert_eq!(run(Mode::Octet, &[("timeout", "10")]).timeout, Some(Duration::from_secs(10)));
        assert_eq!(run(Mode::Octet, &[("timeout", "11")]).oack(), None);
    }

    #[test]
    fn window_is_held_to_its_byte_budget() {
        // 16 blocks of 8192 bytes would hold 128 KiB; the budget is 64 KiB, so 8 blocks,
        // whichever option comes first.
        let limits = Limits { max_blksize: 8192, ..LIMITS };
        for opts in [[("windowsize", "16"), ("blksize", "8192")], [("blksize", "8192"), ("windowsize", "16")]] {
            let mut raw = Vec::new();
            request_packet(&mut raw, OP_RRQ, b"f", Mode::Octet, &opts);
            let Ok(Packet::Rrq(r)) = parse(&raw) else { panic!() };
            let n = negotiate(&r, limits, 1000);
            assert_eq!((n.blksize, n.windowsize), (8192, 8));
            assert!(n.accepted.contains(&("windowsize", 8)), "{:?}", n.accepted);
        }
        // A block larger than the budget still gets a window of one.
        let tiny = Limits { max_window_bytes: 100, ..LIMITS };
        let mut raw = Vec::new();
        request_packet(&mut raw, OP_RRQ, b"f", Mode::Octet, &[("blksize", "1024"), ("windowsize", "4")]);
        let Ok(Packet::Rrq(r)) = parse(&raw) else { panic!() };
        assert_eq!(negotiate(&r, tiny, 1).windowsize, 1);
    }

    #[test]
    fn netascii_has_no_tsize() {
        let n = run(Mode::Netascii, &[("tsize", "0"), ("blksize", "1024")]);
        assert_eq!(n.accepted, [("blksize", 1024)]);
    }
}
