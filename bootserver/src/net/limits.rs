//! Limits shared by the TCP services (HTTP, the broker's agent listener, the admin API, the VNC
//! proxy): an accept loop that survives accept errors, caps on connections per service and per
//! peer, a process-wide budget of open files, handshake and idle timeouts, and the small rate
//! tools (back-off, token bucket, rate-limited log lines) they need.
//!
//! Every LAN host can open connections to the boot server, and one process serves every PC:
//! whatever a host holds open must stay within bounds, and the last open files must stay free
//! for DHCP, TFTP and the state files.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// What one TCP service admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Connections open at once, from every peer.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_per_peer: usize,
    /// Longest time a new connection may take to finish its handshake (HTTP: to send a
    /// request's headers; broker: its hello; proxy: the RFB handshake).
    pub handshake_timeout: Duration,
    /// A connection with no byte read or written for this long is closed; None: never.
    pub idle_timeout: Option<Duration>,
}

/// The `[limits.SERVICE]` keys; absent keys take the service's default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLimitsConfig {
    pub max_connections: Option<usize>,
    pub max_per_peer: Option<usize>,
    pub handshake_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub open_files_reserve: Option<usize>,
    pub agent_messages_per_sec: Option<u32>,
    pub agent_message_burst: Option<u32>,
    pub registry_flush_ms: Option<u64>,
    #[serde(default)]
    pub http: ServiceLimitsConfig,
    #[serde(default)]
    pub broker: ServiceLimitsConfig,
    #[serde(default)]
    pub admin: ServiceLimitsConfig,
    #[serde(default)]
    pub proxy: ServiceLimitsConfig,
}

/// Validated limits, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open files kept free of connections for DHCP, TFTP, NFS and the state files.
    pub open_files_reserve: usize,
    /// Messages per second one agent connection may send (on average)...
    pub agent_messages_per_sec: u32,
    /// ...and in a burst; beyond that they are dropped.
    pub agent_message_burst: u32,
    /// How often the client registry writes the agents' pongs and statuses, batched.
    pub registry_flush: Duration,
    pub http: ServiceLimits,
    pub broker: ServiceLimits,
    pub admin: ServiceLimits,
    pub proxy: ServiceLimits,
}

impl Default for Limits {
    fn default() -> Self {
        LimitsConfig::default().resolve().expect("the defaults are valid")
    }
}

/// A service's default limits and the names of its keys, for error messages.
struct ServiceSpec {
    defaults: ServiceLimits,
    keys: [&'static str; 4],
    /// Why the service has no idle timeout, where it has none.
    no_idle: Option<&'static str>,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const HTTP_KEYS: [&str; 4] = [
    "limits.http.max_connections",
    "limits.http.max_per_peer",
    "limits.http.handshake_timeout_secs",
    "limits.http.idle_timeout_secs",
];
const BROKER_KEYS: [&str; 4] = [
    "limits.broker.max_connections",
    "limits.broker.max_per_peer",
    "limits.broker.handshake_timeout_secs",
    "limits.broker.idle_timeout_secs",
];
const ADMIN_KEYS: [&str; 4] = [
    "limits.admin.max_connections",
    "limits.admin.max_per_peer",
    "limits.admin.handshake_timeout_secs",
    "limits.admin.idle_timeout_secs",
];
const PROXY_KEYS: [&str; 4] = [
    "limits.proxy.max_connections",
    "limits.proxy.max_per_peer",
    "limits.proxy.handshake_timeout_secs",
    "limits.proxy.idle_timeout_secs",
];

fn service_limits(c: &ServiceLimitsConfig, spec: ServiceSpec) -> Result<ServiceLimits, (&'static str, String)> {
    let d = spec.defaults;
    let [k_max, k_peer, k_hs, k_idle] = spec.keys;
    let max_connections = c.max_connections.unwrap_or(d.max_connections);
    if max_connections == 0 {
        return Err((k_max, format!("0 admits no connection; use at least 1 (default {})", d.max_connections)));
    }
    let max_per_peer = c.max_per_peer.unwrap_or(d.max_per_peer.min(max_connections));
    if max_per_peer == 0 {
        return Err((k_peer, format!("0 admits no connection; use at least 1 (default {})", d.max_per_peer)));
    }
    if max_per_peer > max_connections {
        return Err((
            k_peer,
            format!("{max_per_peer} is more than max_connections ({max_connections}); lower it or raise max_connections"),
        ));
    }
    let hs = c.handshake_timeout_secs.unwrap_or(d.handshake_timeout.as_secs());
    if hs == 0 {
        return Err((k_hs, format!("0 s leaves no time for a handshake; use e.g. {}", d.handshake_timeout.as_secs())));
    }
    let idle_timeout = match (c.idle_timeout_secs, spec.no_idle) {
        (Some(_), Some(why)) => return Err((k_idle, format!("{why}; remove the key"))),
        (Some(0), None) => {
            return Err((k_idle, "0 s would close every connection at once; use e.g. 60".to_string()))
        }
        (Some(s), None) => Some(secs(s)),
        (None, _) => d.idle_timeout,
    };
    Ok(ServiceLimits { max_connections, max_per_peer, handshake_timeout: secs(hs), idle_timeout })
}

impl LimitsConfig {
    /// Applies the defaults and checks the values; an error is the key and what to do.
    pub fn resolve(&self) -> Result<Limits, (&'static str, String)> {
        let open_files_reserve = self.open_files_reserve.unwrap_or(64);
        if open_files_reserve < 16 {
            return Err((
                "limits.open_files_reserve",
                format!("{open_files_reserve} leaves DHCP, TFTP and the state files too few open files; use at least 16 (default 64)"),
            ));
        }
        let agent_messages_per_sec = self.agent_messages_per_sec.unwrap_or(20);
        if agent_messages_per_sec == 0 {
            return Err(("limits.agent_messages_per_sec", "0 would drop every pong; use e.g. 20".into()));
        }
        let agent_message_burst = self.agent_message_burst.unwrap_or(100);
        if agent_message_burst < agent_messages_per_sec {
            return Err((
                "limits.agent_message_burst",
                format!("{agent_message_burst} is below agent_messages_per_sec ({agent_messages_per_sec}); raise it to at least that"),
            ));
        }
        let flush = self.registry_flush_ms.unwrap_or(1000);
        if !(10..=60_000).contains(&flush) {
            return Err(("limits.registry_flush_ms", format!("{flush} ms is outside 10..=60000; use e.g. 1000")));
        }
        let http = service_limits(
            &self.http,
            ServiceSpec {
                defaults: ServiceLimits {
                    max_connections: 256,
                    max_per_peer: 16,
                    handshake_timeout: secs(10),
                    idle_timeout: Some(secs(60)),
                },
                keys: HTTP_KEYS,
                no_idle: None,
            },
        )?;
        let broker = service_limits(
            &self.broker,
            ServiceSpec {
                defaults: ServiceLimits {
                    max_connections: 1024,
                    max_per_peer: 4,
                    handshake_timeout: secs(10),
                    idle_timeout: None,
                },
                keys: BROKER_KEYS,
                no_idle: Some("the broker pings each agent and drops it after three unanswered pings"),
            },
        )?;
        let admin = service_limits(
            &self.admin,
            ServiceSpec {
                defaults: ServiceLimits {
                    max_connections: 64,
                    max_per_peer: 64,
                    handshake_timeout: secs(10),
                    idle_timeout: Some(secs(60)),
                },
                keys: ADMIN_KEYS,
                no_idle: None,
            },
        )?;
        let proxy = service_limits(
            &self.proxy,
            ServiceSpec {
                defaults: ServiceLimits {
                    max_connections: 256,
                    max_per_peer: 8,
                    handshake_timeout: secs(10),
                    idle_timeout: None,
                },
                keys: PROXY_KEYS,
                no_idle: Some("a viewer of a still screen may rightly send nothing for hours"),
            },
        )?;
        Ok(Limits {
            open_files_reserve,
            agent_messages_per_sec,
            agent_message_burst,
            registry_flush: Duration::from_millis(flush),
            http,
            broker,
            admin,
            proxy,
        })
    }
}

/// The open files that connections may use, process-wide: the open-files limit less what was
/// open at start less the reserve. Each connection takes its service's share while it lives.
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    used: AtomicUsize,
}

impl FdBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(FdBudget { limit, used: AtomicUsize::new(0) })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + n <= self.limit).then_some(u + n))
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Raises the open-files soft limit to the hard limit (a systemd service starts at 1024 of
/// a hard 512Ki) and returns the budget left for connections once `reserve` files are kept
/// back and the files open now are counted.
pub fn raise_open_files(reserve: usize) -> io::Result<Arc<FdBudget>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            let e = io::Error::last_os_error();
            log::warn!("open files: cannot raise the limit from {before} to {}: {e}", lim.rlim_max);
            lim.rlim_cur = before;
        }
    }
    let soft = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX).min(1 << 24);
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(16);
    let budget = soft.saturating_sub(open + reserve);
    log::info!("open files: limit {soft}, {open} open at start, {reserve} kept in reserve, {budget} for connections");
    Ok(FdBudget::new(budget))
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The service has its `max_connections` open.
    Service,
    /// The peer has its `max_per_peer` open.
    Peer,
    /// The connections of every service together would eat the reserve of open files.
    OpenFiles,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Counts one service's connections and admits new ones within its limits and the budget.
pub struct ConnLimiter {
    service: &'static str,
    /// The service's config table, named in log lines (e.g. `limits.http`).
    table: &'static str,
    limits: ServiceLimits,
    /// Open files one connection holds (a socket, plus e.g. the file being sent).
    files_per_conn: usize,
    budget: Arc<FdBudget>,
    counts: Mutex<Counts>,
    refusals: Mutex<LogEvery>,
}

/// One admitted connection; dropping it gives its place back.
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    peer: IpAddr,
}

impl ConnLimiter {
    pub fn new(
        service: &'static str,
        table: &'static str,
        limits: ServiceLimits,
        files_per_conn: usize,
        budget: Arc<FdBudget>,
    ) -> Arc<Self> {
        Arc::new(ConnLimiter {
            service,
            table,
            limits,
            files_per_conn,
            budget,
            counts: Mutex::default(),
            refusals: Mutex::new(LogEvery::new(Duration::from_secs(10))),
        })
    }

    /// A limiter with `limits` and no open-files budget to share, for tests and tools that run
    /// one service on its own.
    pub fn unbounded(service: &'static str, limits: ServiceLimits) -> Arc<Self> {
        Self::new(service, "limits", limits, 1, FdBudget::new(usize::MAX / 2))
    }

    pub fn limits(&self) -> &ServiceLimits {
        &self.limits
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters only: a panic elsewhere cannot leave them half-written.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Admits a connection from `peer`, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnGuard, Refusal> {
        let mut c = self.counts();
        if c.total >= self.limits.max_connections {
            return Err(Refusal::Service);
        }
        let from_peer = c.per_peer.get(&peer).copied().unwrap_or(0);
        if from_peer >= self.limits.max_per_peer {
            return Err(Refusal::Peer);
        }
        if !self.budget.take(self.files_per_conn) {
            return Err(Refusal::OpenFiles);
        }
        c.total += 1;
        *c.per_peer.entry(peer).or_default() += 1;
        Ok(ConnGuard { limiter: self.clone(), peer })
    }

    /// Logs a refusal, at most one line per 10 s per service with the count of the others.
    pub fn log_refusal(&self, peer: SocketAddr, why: Refusal) {
        let now = Instant::now();
        let Some(more) = self.refusals.lock().unwrap_or_else(|p| p.into_inner()).hit(now) else { return };
        let l = &self.limits;
        let reason = match why {
            Refusal::Service => format!("{} connections open ({}.max_connections)", l.max_connections, self.table),
            Refusal::Peer => {
                format!("{} connections open from {} ({}.max_per_peer)", l.max_per_peer, peer.ip(), self.table)
            }
            Refusal::OpenFiles => format!(
                "the open files for connections are used up ({} of {}; limits.open_files_reserve kept free)",
                self.budget.used(),
                self.budget.limit()
            ),
        };
        log::warn!("{}: refused {peer}: {reason}{}", self.service, suppressed(more));
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let l = &self.limiter;
        l.budget.give(l.files_per_conn);
        let mut c = l.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it not logged)")
    }
}

/// Exponential back-off: `first`, doubled at each step up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, next: first }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// At most one log line per `every`; counts the ones held back.
#[derive(Debug, Clone)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogEvery {
    pub fn new(every: Duration) -> Self {
        LogEvery { every, last: None, held: 0 }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; None when this one is held back.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket { rate: rate.into(), burst: burst.into(), tokens: burst.into(), last: now }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Errors of accept(2) that mean the process or the system is out of something (open files,
/// memory): waiting is the only cure, and retrying at once would spin.
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Accepts connections for ever: each one within `limiter`'s limits runs `handle` in a task of
/// its own, holding its place until it ends (or panics); one over a limit is closed at once
/// and logged. An accept error is logged and retried after a back-off (at least 100 ms when
/// the process is out of open files), never the end of the service.
pub async fn accept_loop<F, Fut>(listener: TcpListener, limiter: Arc<ConnLimiter>, handle: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr()?;
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    let mut errors = LogEvery::new(Duration::from_secs(5));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.reset();
                match limiter.admit(peer.ip()) {
                    Ok(guard) => {
                        let work = handle(stream, peer);
                        tokio::spawn(async move {
                            work.await;
                            drop(guard);
                        });
                    }
                    Err(why) => {
                        drop(stream);
                        limiter.log_refusal(peer, why);
                    }
                }
            }
            Err(e) => {
                let mut wait = backoff.next_delay();
                if is_exhaustion(&e) {
                    wait = wait.max(Duration::from_millis(100));
                }
                if let Some(more) = errors.hit(Instant::now()) {
                    log::warn!(
                        "{}: accepting on {local}: {e}; retrying in {wait:?}{}",
                        limiter.service,
                        suppressed(more)
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A stream that fails with `TimedOut` once nothing has been read or written for `timeout`.
/// Both directions share one deadline, so it suits a stream polled by one task (hyper's
/// connection task).
pub struct IdleTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        let now = tokio::time::Instant::now();
        let first = timeout.unwrap_or(Duration::from_secs(86400 * 365));
        IdleTimeout { inner, timeout, last: Instant::now(), sleep: Box::pin(tokio::time::sleep_until(now + first)) }
    }

    /// On no progress: whether the idle time is up. The timer is only re-armed when it fires,
    /// not at every byte.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.timeout else { return false };
        while self.sleep.as_mut().poll(cx).is_ready() {
            let deadline = self.last + timeout;
            if Instant::now() >= deadline {
                return true;
            }
            self.sleep.as_mut().reset(tokio::time::Instant::from_std(deadline));
        }
        false
    }

    fn timed_out(&self) -> io::Error {
        let t = self.timeout.unwrap_or_default();
        io::Error::new(io::ErrorKind::TimedOut, format!("nothing sent or received for {t:?}"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Largest buffer hyper keeps for one connection's request head: a boot client sends a few
/// hundred bytes of headers.
const MAX_HTTP_BUF: usize = 64 * 1024;

/// Serves `router` over HTTP/1 on every admitted connection: the request head must arrive
/// within the handshake timeout (also the keep-alive wait for the next request), and a
/// connection idle for the idle timeout is closed. Handlers can take `ConnectInfo<SocketAddr>`.
pub async fn serve_router(listener: TcpListener, limiter: Arc<ConnLimiter>, router: axum::Router) -> anyhow::Result<()> {
    let limits = limiter.limits().clone();
    let service = limiter.service();
    accept_loop(listener, limiter, move |stream, peer| {
        let router = router.clone();
        let limits = limits.clone();
        async move {
            let _ = stream.set_nodelay(true);
            let io = hyper_util::rt::TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout)
                .max_buf_size(MAX_HTTP_BUF);
            if let Err(e) = b.serve_connection(io, svc).await {
                log::debug!("{service}: connection of {peer}: {e}");
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, peer: usize) -> ServiceLimits {
        ServiceLimits {
            max_connections: total,
            max_per_peer: peer,
            handshake_timeout: secs(1),
            idle_timeout: None,
        }
    }

    #[test]
    fn caps_per_peer_per_service_and_open_files() {
        let budget = FdBudget::new(9);
        let l = ConnLimiter::new("test", "limits.test", limits(4, 2), 2, budget.clone());
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refusal::Peer));
        let _b1 = l.admit(b).unwrap();
        let _b2 = l.admit(b).unwrap();
        assert_eq!(l.admit(c).err(), Some(Refusal::Service));
        assert_eq!((l.open(), budget.used()), (4, 8));
        drop(a1);
        assert_eq!((l.open(), budget.used()), (3, 6));
        let other = ConnLimiter::new("other", "limits.other", limits(10, 10), 2, budget.clone());
        let _o = other.admit(c).unwrap();
        // 8 of 9 used: another 2-file connection would eat into the reserve.
        assert_eq!(l.admit(c).err(), Some(Refusal::OpenFiles));
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let seq: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [10, 20, 40, 50, 50]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut tb = TokenBucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| tb.allow(t0)).count(), 5);
        assert!(tb.allow(t0 + Duration::from_millis(100)));
        assert!(!tb.allow(t0 + Duration::from_millis(100)));
        // Saving up stops at the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..20).filter(|_| tb.allow(later)).count(), 5);
    }

    #[test]
    fn log_every_holds_back_and_counts() {
        let t0 = Instant::now();
        let mut l = LogEvery::new(Duration::from_secs(10));
        assert_eq!(l.hit(t0), Some(0));
        assert_eq!(l.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.hit(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.hit(t0 + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn config_defaults_and_errors_name_the_key() {
        let d = Limits::default();
        assert_eq!((d.http.max_connections, d.http.max_per_peer, d.open_files_reserve), (256, 16, 64));
        assert_eq!(d.proxy.idle_timeout, None);
        let bad = |text: &str| {
            let c: LimitsConfig = toml::from_str(text).unwrap();
            c.resolve().unwrap_err()
        };
        assert_eq!(bad("[http]\nmax_per_peer = 0").0, "limits.http.max_per_peer");
        assert_eq!(bad("[proxy]\nmax_connections = 4\nmax_per_peer = 5").0, "limits.proxy.max_per_peer");
        let (key, msg) = bad("[broker]\nidle_timeout_secs = 30");
        assert_eq!(key, "limits.broker.idle_timeout_secs");
        assert!(msg.contains("remove the key"), "{msg}");
        assert_eq!(bad("open_files_reserve = 2").0, "limits.open_files_reserve");
        assert_eq!(bad("[admin]\nhandshake_timeout_secs = 0").0, "limits.admin.handshake_timeout_secs");
        // A smaller service cap lowers the default per-peer cap with it.
        let c: LimitsConfig = toml::from_str("[http]\nmax_connections = 4").unwrap();
        assert_eq!(c.resolve().unwrap().http.max_per_peer, 4);
    }

    #[tokio::test]
    async fn an_idle_stream_times_out_and_a_busy_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = IdleTimeout::new(a, Some(Duration::from_millis(200)));
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..6 {
                b.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            b
        });
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        for _ in 0..6 {
            idle.read_exact(&mut buf).await.unwrap();
        }
        let _b = writer.await.unwrap();
        let t0 = Instant::now();
        let e = idle.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
