//! Token buckets for the UDP services, free of I/O: the caller passes the time.
//!
//! UDP sources are easy to forge and a LAN host can make up any number of them, so a limit
//! per sender needs a table whose size does not grow with what the sender makes up:
//! [`PerKey`] holds at most a fixed number of buckets and sheds the ones that are full again
//! (a full bucket carries no information: a new one starts the same way).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How many events may happen at once and how fast the allowance comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed in a burst, from a full bucket.
    pub burst: u32,
    /// Time to earn back one event.
    pub every: Duration,
}

impl Rate {
    /// `per_sec` events a second, with bursts of `burst`; zero rates allow nothing but the
    /// burst, a zero burst allows nothing.
    pub fn per_sec(per_sec: u32, burst: u32) -> Rate {
        let every = match per_sec {
            0 => Duration::MAX,
            n => Duration::from_secs(1) / n,
        };
        Rate { burst, every }
    }
}

/// One bucket. Starts full.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: u32,
    /// When the bucket last earned a token (or was found full).
    refilled: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket { tokens: rate.burst, refilled: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Whether the bucket is full at `now`, i.e. it remembers nothing worth keeping.
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let since = now.saturating_duration_since(self.refilled);
        let earned = since.as_nanos() / rate.every.as_nanos().max(1);
        if earned == 0 {
            return;
        }
        let room = rate.burst.saturating_sub(self.tokens);
        if earned >= u128::from(room) {
            self.tokens = rate.burst;
            self.refilled = now;
        } else {
            // Whole tokens only; the remainder of the interval counts toward the next one.
            self.tokens += earned as u32;
            self.refilled += rate.every * earned as u32;
        }
    }
}

/// One bucket per key, at most `capacity` of them.
#[derive(Debug)]
pub struct PerKey<K> {
    rate: Rate,
    capacity: usize,
    buckets: HashMap<K, Bucket>,
}

/// Why [`PerKey::take`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// This key spent its allowance.
    Key,
    /// The table is full of keys that are all over their limit: a new key is refused until
    /// one of them recovers.
    Table,
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    pub fn new(rate: Rate, capacity: usize) -> PerKey<K> {
        PerKey { rate, capacity: capacity.max(1), buckets: HashMap::new() }
    }

    /// Takes one token from `key`'s bucket.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Denied> {
        if let Some(b) = self.buckets.get_mut(key) {
            return if b.take(self.rate, now) { Ok(()) } else { Err(Denied::Key) };
        }
        if self.buckets.len() >= self.capacity {
            let rate = self.rate;
            self.buckets.retain(|_, b| !b.is_full(rate, now));
            if self.buckets.len() >= self.capacity {
                return Err(Denied::Table);
            }
        }
        let mut b = Bucket::new(self.rate, now);
        if !b.take(self.rate, now) {
            return Err(Denied::Key);
        }
        self.buckets.insert(key.clone(), b);
        Ok(())
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate { burst: 3, every: Duration::from_millis(100) };

    #[test]
    fn burst_then_refill_in_whole_tokens() {
        let t0 = Instant::now();
        let mut b = Bucket::new(RATE, t0);
        assert!((0..3).all(|_| b.take(RATE, t0)));
        assert!(!b.take(RATE, t0));
        assert!(!b.take(RATE, t0 + Duration::from_millis(99)));
        let t1 = t0 + Duration::from_millis(150);
        assert!(b.take(RATE, t1));
        assert!(!b.take(RATE, t1));
        // The half interval left over counts: one more at 200 ms.
        assert!(b.take(RATE, t0 + Duration::from_millis(200)));
        // A long pause refills the burst, no more.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.take(RATE, later)));
        assert!(!b.take(RATE, later));
        // A time before the last refill earns nothing.
        assert!(!b.take(RATE, t0));
    }

    #[test]
    fn per_sec_and_zero_rates() {
        assert_eq!(Rate::per_sec(4, 8), Rate { burst: 8, every: Duration::from_millis(250) });
        let t0 = Instant::now();
        let none = Rate::per_sec(0, 1);
        let mut b = Bucket::new(none, t0);
        assert!(b.take(none, t0));
        assert!(!b.take(none, t0 + Duration::from_secs(1_000_000)));
        let closed = Rate::per_sec(10, 0);
        assert!(!Bucket::new(closed, t0).take(closed, t0));
    }

    #[test]
    fn keys_are_limited_apart_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut p: PerKey<u32> = PerKey::new(RATE, 4);
        for key in 0..4 {
            assert!((0..3).all(|_| p.take(&key, t0).is_ok()));
            assert_eq!(p.take(&key, t0), Err(Denied::Key));
        }
        // Four keys over their limit fill the table: a fifth is refused, whatever it is.
        assert_eq!(p.take(&99, t0), Err(Denied::Table));
        assert_eq!(p.len(), 4);
        // Once the others recovered, their buckets are shed and the newcomer gets one.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(p.take(&99, later), Ok(()));
        assert_eq!(p.len(), 1);
        // A key whose bucket was shed starts full again.
        assert!((0..3).all(|_| p.take(&0, later).is_ok()));
        assert_eq!(p.take(&0, later), Err(Denied::Key));
    }
}
