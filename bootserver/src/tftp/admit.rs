//! Which requests start a transfer, free of I/O.
//!
//! A transfer holds two sockets, a file, its buffers and a task until it ends, and every
//! request that gets an answer sends a datagram to whatever source address it names, forged or
//! not. So requests are limited per host (a token bucket on the source address, whatever the
//! port) before anything is opened, and running transfers are capped per host and in total.
//! A request over a limit gets no answer: an ERROR would make a real client give up, while
//! silence makes it retransmit its request, which succeeds once the burst is over.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::ratelimit::{Denied, PerKey, Rate};

/// Source hosts whose request rate is tracked at once; see [`PerKey`].
const TRACKED_HOSTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_transfers: usize,
    pub max_per_host: usize,
    /// Requests (read or write) per source host.
    pub requests: Rate,
}

/// Why a request is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The same client (address and port) has a transfer running: a retransmitted request.
    Repeated,
    /// Its host sent more requests than [`Limits::requests`] allows.
    RateLimited,
    /// Too many hosts are over their rate at once to track another.
    TooManyHosts,
    /// Its host has [`Limits::max_per_host`] transfers running.
    HostBusy(usize),
    /// [`Limits::max_transfers`] are running.
    Busy(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Repeated => write!(f, "repeated its request; its transfer is running"),
            Refused::RateLimited => write!(f, "over its request rate"),
            Refused::TooManyHosts => write!(f, "too many hosts over their request rate"),
            Refused::HostBusy(n) => write!(f, "its host has {n} transfers running, the most allowed"),
            Refused::Busy(n) => write!(f, "{n} transfers are running, the most allowed"),
        }
    }
}

/// The running transfers and the request rates.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    running: HashSet<SocketAddr>,
    per_host: HashMap<IpAddr, usize>,
    rates: PerKey<IpAddr>,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            running: HashSet::new(),
            per_host: HashMap::new(),
            rates: PerKey::new(limits.requests, TRACKED_HOSTS),
        }
    }

    /// Counts a request from `peer` against its host's rate: `Ok` if it may be answered.
    pub fn request(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Refused> {
        self.rates.take(&peer.ip(), now).map_err(|d| match d {
            Denied::Key => Refused::RateLimited,
            Denied::Table => Refused::TooManyHosts,
        })
    }

    /// A read request from `peer`: `Ok` if a transfer may start, which then counts until
    /// [`Admission::finish`].
    pub fn start(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Refused> {
        // Before the rate: a retransmitted request costs its host nothing.
        if self.running.contains(&peer) {
            return Err(Refused::Repeated);
        }
        self.request(peer, now)?;
        if self.running.len() >= self.limits.max_transfers {
            return Err(Refused::Busy(self.running.len()));
        }
        let host = self.per_host.get(&peer.ip()).copied().unwrap_or(0);
        if host >= self.limits.max_per_host {
            return Err(Refused::HostBusy(host));
        }
        self.running.insert(peer);
        *self.per_host.entry(peer.ip()).or_default() += 1;
        Ok(())
    }

    /// The transfer of `peer` ended.
    pub fn finish(&mut self, peer: SocketAddr) {
        if !self.running.remove(&peer) {
            return;
        }
        if let Some(n) = self.per_host.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&peer.ip());
            }
        }
    }

    /// Transfers running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn admission(burst: u32) -> Admission {
        Admission::new(Limits { max_transfers: 3, max_per_host: 2, requests: Rate::per_sec(2, burst) })
    }

    #[test]
    fn caps_per_host_and_in_total() {
        let now = Instant::now();
        let mut a = admission(100);
        let (c1, c2, c3) = (addr("10.0.0.5:1000"), addr("10.0.0.5:1001"), addr("10.0.0.5:1002"));
        assert_eq!(a.start(c1, now), Ok(()));
        assert_eq!(a.start(c1, now), Err(Refused::Repeated));
        assert_eq!(a.start(c2, now), Ok(()));
        assert_eq!(a.start(c3, now), Err(Refused::HostBusy(2)));
        let other = addr("10.0.0.6:1000");
        assert_eq!(a.start(other, now), Ok(()));
        assert_eq!(a.start(addr("10.0.0.7:1000"), now), Err(Refused::Busy(3)));
        a.finish(c1);
        a.finish(c1);
        assert_eq!(a.running(), 2);
        assert_eq!(a.start(c3, now), Ok(()));
        for c in [c2, c3, other] {
            a.finish(c);
        }
        assert_eq!(a.running(), 0);
        assert!(a.per_host.is_empty());
    }

    #[test]
    fn requests_are_rate_limited_per_host_whatever_the_port() {
        let now = Instant::now();
        let mut a = admission(3);
        for port in 0..3 {
            let c = SocketAddr::from(([10, 0, 0, 5], 2000 + port));
            assert_eq!(a.start(c, now), Ok(()));
            a.finish(c);
        }
        assert_eq!(a.start(addr("10.0.0.5:3000"), now), Err(Refused::RateLimited));
        assert_eq!(a.request(addr("10.0.0.5:3001"), now), Err(Refused::RateLimited));
        // Another host has its own allowance; this one earns a request back in half a second.
        assert_eq!(a.request(addr("10.0.0.6:3000"), now), Ok(()));
        assert_eq!(a.start(addr("10.0.0.5:3000"), now + Duration::from_millis(500)), Ok(()));
        // A refused request takes no transfer slot.
        assert_eq!(a.running(), 1);
    }
}
