//! Datagrams that reach a transfer's port from anyone but its peer (RFC 1350 section 4): they
//! are not part of the transfer, and their sender is told so with ERROR 5 "Unknown transfer
//! ID" while the transfer goes on undisturbed.
//!
//! Free of I/O like the rest of the protocol core: [`Strays::judge`] says whether to answer,
//! the transfer's loop does the sending.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::{self, Packet, ParseError};
use crate::ratelimit::{Bucket, Rate};

/// The answer to every stray, written once at compile time so that a stray costs no
/// allocation; the unit tests check it against [`packet::error`].
pub const UNKNOWN_TID: &[u8] = b"\0\x05\0\x05Unknown transfer ID\0";

/// Answers a transfer sends in a burst before the rate limit applies.
///
/// Why a limit: the answer is larger than the smallest stray (4 bytes of ACK), and UDP sources
/// are easy to forge, so without one each transfer port would reflect a flood at whatever
/// address the forger names, and spend the transfer's time doing it. A TFTP client that lost
/// track of its transfer sends one packet per timeout, far below the limit.
pub const BURST: u32 = 8;
/// Time to earn back one answer after the burst is spent.
pub const REFILL: Duration = Duration::from_millis(250);

/// Why a stray gets no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Silent {
    /// An ERROR is never answered with an ERROR: two servers would bounce them for ever.
    Error { code: u16 },
    /// Not TFTP: whoever sent it would not understand the answer, or might answer it in turn.
    Malformed(ParseError),
    /// The datagram came from the peer after all; it belongs to the transfer.
    FromPeer,
    /// Over the rate limit; see [`BURST`].
    RateLimited,
}

/// What to do with a stray datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send [`UNKNOWN_TID`] to its source. `kind` names the stray's packet type for the log.
    Answer { kind: &'static str },
    Drop(Silent),
}

/// The stray rate limit, [`BURST`] and [`REFILL`].
const RATE: Rate = Rate { burst: BURST, every: REFILL };

/// Decides on the strays of one transfer; a token bucket caps the answers.
#[derive(Debug)]
pub struct Strays {
    peer: SocketAddr,
    bucket: Bucket,
}

impl Strays {
    pub fn new(peer: SocketAddr, now: Instant) -> Self {
        Strays { peer, bucket: Bucket::new(RATE, now) }
    }

    /// The transfer's own peer, whose datagrams are not strays.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Judges `datagram` that arrived from `from` at `now`.
    pub fn judge(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Verdict {
        if from == self.peer {
            return Verdict::Drop(Silent::FromPeer);
        }
        let kind = match packet::parse(datagram) {
            Ok(Packet::Error { code, .. }) => return Verdict::Drop(Silent::Error { code }),
            Ok(p) => p.name(),
            Err(e) => return Verdict::Drop(Silent::Malformed(e)),
        };
        if !self.bucket.take(RATE, now) {
            return Verdict::Drop(Silent::RateLimited);
        }
        Verdict::Answer { kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::ErrorCode;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const ACK: &[u8] = b"\0\x04\0\x07";

    #[test]
    fn answer_is_the_rfc_error_5() {
        let mut v = Vec::new();
        packet::error(&mut v, ErrorCode::UnknownTid, "Unknown transfer ID");
        assert_eq!(v, UNKNOWN_TID);
        assert_eq!(packet::parse(UNKNOWN_TID), Ok(Packet::Error { code: 5, message: b"Unknown transfer ID" }));
    }

    #[test]
    fn tftp_packets_from_others_are_answered() {
        let now = Instant::now();
        let mut s = Strays::new(addr("10.0.0.5:2000"), now);
        let other_port = addr("10.0.0.5:2001");
        let other_host = addr("10.0.0.6:2000");
        assert_eq!(s.judge(ACK, other_port, now), Verdict::Answer { kind: "ACK" });
        assert_eq!(s.judge(b"\0\x03\0\x01data", other_host, now), Verdict::Answer { kind: "DATA" });
        assert_eq!(s.judge(b"\0\x01f\0octet\0", other_host, now), Verdict::Answer { kind: "RRQ" });
        assert_eq!(s.judge(b"\0\x06tsize\x001\0", other_host, now), Verdict::Answer { kind: "OACK" });
    }

    #[test]
    fn errors_junk_and_the_peer_are_not_answered() {
        let now = Instant::now();
        let peer = addr("10.0.0.5:2000");
        let mut s = Strays::new(peer, now);
        let other = addr("10.0.0.9:69");
        assert_eq!(s.judge(UNKNOWN_TID, other, now), Verdict::Drop(Silent::Error { code: 5 }));
        assert_eq!(s.judge(b"\0\x05\0\x00", other, now), Verdict::Drop(Silent::Error { code: 0 }));
        assert_eq!(s.judge(b"\0", other, now), Verdict::Drop(Silent::Malformed(ParseError::NoOpcode(1))));
        let junk = Verdict::Drop(Silent::Malformed(ParseError::UnknownOpcode(0x1234)));
        assert_eq!(s.judge(b"\x12\x34xyz", other, now), junk);
        assert_eq!(s.judge(ACK, peer, now), Verdict::Drop(Silent::FromPeer));
        // None of these spent a token.
        for _ in 0..BURST {
            assert!(matches!(s.judge(ACK, other, now), Verdict::Answer { .. }));
        }
    }

    #[test]
    fn answers_are_rate_limited_and_recover() {
        let t0 = Instant::now();
        let mut s = Strays::new(addr("10.0.0.5:2000"), t0);
        let other = addr("10.0.0.6:3000");
        for _ in 0..BURST {
            assert!(matches!(s.judge(ACK, other, t0), Verdict::Answer { .. }));
        }
        assert_eq!(s.judge(ACK, other, t0), Verdict::Drop(Silent::RateLimited));
        // Just short of one interval: still nothing.
        let early = t0 + REFILL - Duration::from_millis(1);
        assert_eq!(s.judge(ACK, other, early), Verdict::Drop(Silent::RateLimited));
        // One interval earns exactly one answer, and a fraction of an interval is kept.
        let t1 = t0 + REFILL + REFILL / 2;
        assert!(matches!(s.judge(ACK, other, t1), Verdict::Answer { .. }));
        assert_eq!(s.judge(ACK, other, t1), Verdict::Drop(Silent::RateLimited));
        assert!(matches!(s.judge(ACK, other, t0 + REFILL * 2), Verdict::Answer { .. }));
        // A long quiet spell refills the burst, no more.
        let later = t0 + REFILL * 1000;
        for _ in 0..BURST {
            assert!(matches!(s.judge(ACK, other, later), Verdict::Answer { .. }));
        }
        assert_eq!(s.judge(ACK, other, later), Verdict::Drop(Silent::RateLimited));
        // Time going backwards (it cannot with Instant, but a caller might pass an old one).
        assert_eq!(s.judge(ACK, other, t0), Verdict::Drop(Silent::RateLimited));
    }
}
