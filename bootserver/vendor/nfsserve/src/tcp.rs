use crate::context::RPCContext;
use crate::rpcwire::*;
use crate::vfs::NFSFileSystem;
use anyhow::anyhow;
use async_trait::async_trait;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{io, net::IpAddr};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tracing::{debug, info, warn};

/// A NFS Tcp Connection Handler
pub struct NFSTcpListener<T: NFSFileSystem + Send + Sync + 'static> {
    listener: TcpListener,
    port: u16,
    arcfs: Arc<T>,
    mount_signal: Option<mpsc::Sender<bool>>,
    policy: Arc<dyn crate::context::AccessPolicy>,
    conns: Arc<ConnectionTable>,
}

pub fn generate_host_ip(hostnum: u16) -> String {
    format!(
        "127.88.{}.{}",
        ((hostnum >> 8) & 0xFF) as u8,
        (hostnum & 0xFF) as u8
    )
}

/// Bounds on one listener's connections. The defaults suit a LAN of thin clients: each
/// kernel client holds one connection per server.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// ConnectionTable open at once on this listener.
    pub max_connections: usize,
    /// ConnectionTable open at once from one address.
    pub max_connections_per_peer: usize,
    /// A new connection must deliver its first call within this, and a call once begun must
    /// arrive whole within it.
    pub handshake_timeout: Duration,
    /// A connection with no call in progress for this long is closed (knfsd closes idle
    /// connections after 6 minutes; clients reconnect on their next call).
    pub idle_timeout: Duration,
    /// Calls of one connection being answered at once; the rest wait in the socket, which
    /// slows the sender instead of queueing replies (a READ reply is up to a megabyte).
    pub max_requests_in_flight: usize,
    pub record: RecordLimits,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 128,
            max_connections_per_peer: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(360),
            max_requests_in_flight: 16,
            record: RecordLimits::default(),
        }
    }
}

/// One open connection, as the accept loop sees it.
struct ConnState {
    peer: IpAddr,
    /// Milliseconds since the registry's epoch at the last call or reply.
    last_active: AtomicU64,
    /// A call has begun to arrive and is not complete yet.
    reading: AtomicBool,
    slots: Arc<Semaphore>,
    max_slots: usize,
    evict: Notify,
    /// Signalled once its socket is closed.
    closed: Notify,
}

impl ConnState {
    /// When it last did something, if it is idle now (nothing arriving, nothing to answer).
    fn idle_since(&self) -> Option<u64> {
        let busy =
            self.reading.load(Ordering::Relaxed) || self.slots.available_permits() < self.max_slots;
        (!busy).then(|| self.last_active.load(Ordering::Relaxed))
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Arc<ConnState>>,
}

/// The open connections of one service, for its caps and for eviction. Listeners that share
/// one (NFS and the portmapper) share its caps, and make room for each other.
pub struct ConnectionTable {
    epoch: Instant,
    limits: ConnectionLimits,
    registry: Mutex<Registry>,
    /// Connections closed for malformed input, logged at most every few seconds.
    malformed_log: Mutex<RateLog>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    PeerFull,
    Full,
    Descriptors,
}

/// Whether a new socket leaves the process too few descriptors for the files it serves and
/// its other services: fewer than an eighth of its limit (at least 64) free. `fd` is the new
/// socket's number and `ours` the connections open in the table; only when either comes near
/// the limit are the open descriptors counted (numbers alone mislead once closed connections
/// have left holes below the highest one).
fn short_of_descriptors(fd: i32, ours: usize) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return false;
    }
    let limit = lim.rlim_cur as u64;
    let reserve = (limit / 8).max(64);
    if (fd.max(0) as u64).max(ours as u64) + 2 * reserve < limit {
        return false;
    }
    let open = match std::fs::read_dir("/proc/self/fd") {
        // Less the descriptor of the listing itself.
        Ok(dir) => dir.count().saturating_sub(1) as u64,
        Err(_) => fd.max(0) as u64 + 1,
    };
    open + reserve >= limit
}

impl ConnectionTable {
    pub fn new(limits: ConnectionLimits) -> Self {
        ConnectionTable {
            epoch: Instant::now(),
            limits,
            registry: Mutex::default(),
            malformed_log: Mutex::new(RateLog::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection that has been idle longest among those `pick` selects, and
    /// returns it; none if none of them is idle.
    fn evict_oldest(
        reg: &mut Registry,
        pick: impl Fn(&ConnState) -> bool,
    ) -> Option<Arc<ConnState>> {
        let oldest = reg
            .conns
            .iter()
            .filter(|(_, c)| pick(c))
            .filter_map(|(id, c)| c.idle_since().map(|t| (t, *id)))
            .min();
        let c = reg.conns.remove(&oldest?.1)?;
        debug!("evicting idle connection from {}", c.peer);
        c.evict.notify_one();
        Some(c)
    }

    /// Admits a connection from `peer`, closing an idle one when a cap is reached: the
    /// peer's own first, so that a host holding connections open only displaces itself.
    /// `short_of_descriptors`: the process is near its open-files limit, so the connection
    /// is admitted only in place of an idle one. Returns the connections closed to make room.
    fn admit(
        &self,
        peer: IpAddr,
        short_of_descriptors: bool,
    ) -> Result<(u64, Arc<ConnState>, Vec<Arc<ConnState>>), Refusal> {
        let mut reg = self.lock();
        let mut evicted = Vec::new();
        if short_of_descriptors {
            evicted.push(Self::evict_oldest(&mut reg, |_| true).ok_or(Refusal::Descriptors)?);
        }
        let of_peer = reg.conns.values().filter(|c| c.peer == peer).count();
        if of_peer >= self.limits.max_connections_per_peer {
            evicted
                .push(Self::evict_oldest(&mut reg, |c| c.peer == peer).ok_or(Refusal::PeerFull)?);
        }
        if reg.conns.len() >= self.limits.max_connections {
            evicted.push(Self::evict_oldest(&mut reg, |_| true).ok_or(Refusal::Full)?);
        }
        let max_slots = self.limits.max_requests_in_flight.max(1);
        let state = Arc::new(ConnState {
            peer,
            last_active: AtomicU64::new(self.now_ms()),
            reading: AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(max_slots)),
            max_slots,
            evict: Notify::new(),
            closed: Notify::new(),
        });
        reg.next_id += 1;
        let id = reg.next_id;
        reg.conns.insert(id, state.clone());
        Ok((id, state, evicted))
    }

    fn remove(&self, id: u64) {
        self.lock().conns.remove(&id);
    }

    /// Frees a file descriptor when the process has none left: closes the connection idle
    /// longest.
    fn evict_for_descriptor(&self) -> bool {
        Self::evict_oldest(&mut self.lock(), |_| true).is_some()
    }
}

/// Removes a connection from the registry when its task ends, however it ends, and tells
/// whoever evicted it that its descriptor is free.
struct Admitted {
    conns: Arc<ConnectionTable>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.remove(self.id);
        self.state.closed.notify_one();
    }
}

/// Logs a repeated event at most every few seconds, with how often it happened meanwhile, so
/// that a flood of bad connections cannot flood the log.
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    const EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        RateLog {
            last: None,
            suppressed: 0,
        }
    }

    /// How many were suppressed since the last line, if a line is due now.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The process (or system) has no file descriptor or memory left for a new socket.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// The accept loop's state across errors: the pause before the next attempt and the log.
struct Accepting {
    port: u16,
    pause: Duration,
    log: RateLog,
}

impl Accepting {
    const FIRST_PAUSE: Duration = Duration::from_millis(50);
    const MAX_PAUSE: Duration = Duration::from_secs(2);

    fn new(port: u16) -> Self {
        Accepting {
            port,
            pause: Self::FIRST_PAUSE,
            log: RateLog::new(),
        }
    }

    /// The next connection. An accept error (no file descriptor left, a connection reset
    /// before it was accepted) is logged and retried after a pause that grows while errors go
    /// on, instead of spinning on a listener that stays readable.
    async fn next(
        &mut self,
        listener: &TcpListener,
        conns: &ConnectionTable,
    ) -> (tokio::net::TcpStream, SocketAddr) {
        loop {
            let e = match listener.accept().await {
                Ok(pair) => {
                    self.pause = Self::FIRST_PAUSE;
                    return pair;
                }
                Err(e) => e,
            };
            // Closing an idle connection gives back a descriptor at once; without one to
            // close, wait longer each time.
            let freed = out_of_descriptors(&e) && conns.evict_for_descriptor();
            let wait = if freed {
                Duration::from_millis(10)
            } else {
                self.pause
            };
            if let Some(n) = self.log.due() {
                warn!(
                    "accept on port {} failed: {e} ({n} more since the last report); retrying in {wait:?}{}",
                    self.port,
                    if freed { " after closing an idle connection" } else { "" }
                );
            }
            tokio::time::sleep(wait).await;
            if !freed {
                self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
            }
        }
    }
}

/// Why a connection ended before its peer closed it. Malformed input is worth a warning (at
/// most every few seconds); timeouts, eviction and resets are routine.
enum Closed {
    Routine(anyhow::Error),
    Malformed(anyhow::Error),
}

fn routine(e: impl Into<anyhow::Error>) -> Closed {
    Closed::Routine(e.into())
}

/// Serves one connection until the peer closes it, it idles out, it is evicted, or it sends
/// something malformed. Calls are read here one record at a time and answered by tasks; a
/// writer sends the replies in the order they are ready.
async fn process_socket(
    socket: tokio::net::TcpStream,
    context: RPCContext,
    limits: &ConnectionLimits,
    conns: &ConnectionTable,
    state: &ConnState,
) -> Result<(), Closed> {
    let _ = socket.set_nodelay(true);
    let (rd, mut wr) = socket.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, OwnedSemaphorePermit)>(state.max_slots);
    let (err_tx, mut err_rx) = mpsc::channel::<anyhow::Error>(1);

    let reader = async move {
        let mut first = true;
        let mut record = Vec::new();
        loop {
            let wait = if first {
                limits.handshake_timeout
            } else {
                limits.idle_timeout
            };
            tokio::select! {
                started = timeout(wait, rd.fill_buf()) => match started {
                    Err(_) if first => return Err(routine(anyhow!("no call within {wait:?} of connecting"))),
                    Err(_) => {
                        // Replies still being worked on keep the connection open.
                        if state.idle_since().is_some() {
                            return Err(routine(anyhow!("idle for {wait:?}")));
                        }
                        continue;
                    }
                    Ok(Err(e)) => return Err(routine(e)),
                    Ok(Ok([])) => return Ok(()),
                    Ok(Ok(_)) => {}
                },
                e = err_rx.recv() => return Err(match e {
                    Some(e) => Closed::Malformed(e),
                    None => routine(anyhow!("reply channel closed")),
                }),
            }
            state.reading.store(true, Ordering::Relaxed);
            let read = timeout(
                limits.handshake_timeout,
                read_record(&mut rd, &limits.record, &mut record),
            )
            .await;
            match read {
                Err(_) => {
                    return Err(routine(anyhow!(
                        "call not complete within {:?}",
                        limits.handshake_timeout
                    )))
                }
                Ok(Err(RecordError::Io(e))) => return Err(routine(e)),
                Ok(Err(e)) => return Err(Closed::Malformed(e.into())),
                Ok(Ok(())) => {}
            }
            first = false;
            let permit = state.slots.clone().acquire_owned().await.map_err(routine)?;
            state.reading.store(false, Ordering::Relaxed);
            state.last_active.store(conns.now_ms(), Ordering::Relaxed);
            let call = std::mem::take(&mut record);
            let context = context.clone();
            let tx = tx.clone();
            let err_tx = err_tx.clone();
            tokio::spawn(async move {
                match handle_record(call, context).await {
                    Ok(reply) => {
                        let _ = tx.send((reply, permit)).await;
                    }
                    Err(e) => {
                        let _ = err_tx.try_send(e);
                    }
                }
            });
        }
    };
    let writer = async {
        while let Some((mut reply, permit)) = rx.recv().await {
            write_fragment(&mut wr, &mut reply).await.map_err(routine)?;
            drop(permit);
            state.last_active.store(conns.now_ms(), Ordering::Relaxed);
        }
        Ok::<(), Closed>(())
    };
    tokio::pin!(writer);
    // Eviction ends the connection whatever it is doing: it was idle when chosen, but may have
    // begun a call since, and it no longer counts against the caps.
    tokio::select! {
        biased;
        _ = state.evict.notified() => Err(routine(anyhow!("closed to make room for another connection"))),
        r = reader => {
            if r.is_ok() {
                // The peer finished sending: answer what it asked before closing (the reader
                // is gone, and with it its sender; the writer ends with the last reply).
                let _ = timeout(limits.handshake_timeout, writer).await;
            }
            r
        }
        w = &mut writer => w,
    }
}

#[async_trait]
pub trait NFSTcp: Send + Sync {
    /// Gets the true listening port. Useful if the bound port number is 0
    fn get_listen_port(&self) -> u16;

    /// Gets the true listening IP. Useful on windows when the IP may be random
    fn get_listen_ip(&self) -> IpAddr;

    /// Sets a mount listener. A "true" signal will be sent on a mount
    /// and a "false" will be sent on an unmount
    fn set_mount_listener(&mut self, signal: mpsc::Sender<bool>);

    /// Loops forever and never returns handling all incoming connections.
    async fn handle_forever(&self) -> io::Result<()>;
}

impl<T: NFSFileSystem + Send + Sync + 'static> NFSTcpListener<T> {
    /// Binds to a ipstr of the form [ip address]:port. For instance
    /// "127.0.0.1:12000". fs is an instance of an implementation
    /// of NFSFileSystem.
    pub async fn bind(ipstr: &str, fs: T) -> io::Result<NFSTcpListener<T>> {
        let (ip, port) = ipstr.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "IP Address must be of form ip:port",
            )
        })?;
        let port = port.parse::<u16>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "Port not in range 0..=65535",
            )
        })?;

        let arcfs: Arc<T> = Arc::new(fs);

        if ip == "auto" {
            let mut num_tries_left = 32;

            for try_ip in 1u16.. {
                let ip = generate_host_ip(try_ip);

                let result = NFSTcpListener::bind_internal(&ip, port, arcfs.clone()).await;

                match &result {
                    Err(_) => {
                        if num_tries_left == 0 {
                            return result;
                        } else {
                            num_tries_left -= 1;
                            continue;
                        }
                    }
                    Ok(_) => {
                        return result;
                    }
                }
            }
            unreachable!(); // Does not detect automatically that loop above never terminates.
        } else {
            // Otherwise, try this.
            NFSTcpListener::bind_internal(ip, port, arcfs).await
        }
    }

    async fn bind_internal(ip: &str, port: u16, arcfs: Arc<T>) -> io::Result<NFSTcpListener<T>> {
        let ipstr = format!("{ip}:{port}");
        let listener = TcpListener::bind(&ipstr).await?;
        info!("Listening on {:?}", &ipstr);

        let port = match listener.local_addr().unwrap() {
            SocketAddr::V4(s) => s.port(),
            SocketAddr::V6(s) => s.port(),
        };
        Ok(NFSTcpListener {
            listener,
            port,
            arcfs,
            mount_signal: None,
            policy: Arc::new(crate::context::OpenPolicy),
            conns: Arc::new(ConnectionTable::new(ConnectionLimits::default())),
        })
    }

    /// Serves on a listener the caller made, e.g. one bound to a single interface.
    /// `advertised_port` is what portmap GETPORT answers (default: this listener's port), so a
    /// listener on the portmapper's port 111 can send clients to the NFS port.
    pub fn from_listener(
        listener: TcpListener,
        fs: T,
        policy: Arc<dyn crate::context::AccessPolicy>,
        advertised_port: Option<u16>,
    ) -> io::Result<NFSTcpListener<T>> {
        let port = match advertised_port {
            Some(p) => p,
            None => listener.local_addr()?.port(),
        };
        Ok(NFSTcpListener {
            listener,
            port,
            arcfs: Arc::new(fs),
            mount_signal: None,
            policy,
            conns: Arc::new(ConnectionTable::new(ConnectionLimits::default())),
        })
    }

    /// Counts this listener's connections in `table` (default: a table of its own with the
    /// default [`ConnectionLimits`]).
    pub fn with_connections(mut self, table: Arc<ConnectionTable>) -> Self {
        self.conns = table;
        self
    }
}

#[async_trait]
impl<T: NFSFileSystem + Send + Sync + 'static> NFSTcp for NFSTcpListener<T> {
    /// Gets the true listening port. Useful if the bound port number is 0
    fn get_listen_port(&self) -> u16 {
        let addr = self.listener.local_addr().unwrap();
        addr.port()
    }

    fn get_listen_ip(&self) -> IpAddr {
        let addr = self.listener.local_addr().unwrap();
        addr.ip()
    }

    /// Sets a mount listener. A "true" signal will be sent on a mount
    /// and a "false" will be sent on an unmount
    fn set_mount_listener(&mut self, signal: mpsc::Sender<bool>) {
        self.mount_signal = Some(signal);
    }

    /// Loops forever and never returns handling all incoming connections. An accept error
    /// (no file descriptor left, a connection reset before it was accepted) is logged and
    /// retried after a pause that grows while errors go on; it never ends the service.
    async fn handle_forever(&self) -> io::Result<()> {
        let mut accepting = Accepting::new(self.port);
        let mut refusal_log = RateLog::new();
        let limits = self.conns.limits.clone();
        loop {
            let (socket, peer) = accepting.next(&self.listener, &self.conns).await;
            if !self.policy.allow_connection(&peer) {
                info!("Refusing connection from {}", peer);
                drop(socket);
                continue;
            }
            let short = short_of_descriptors(socket.as_raw_fd(), self.conns.lock().conns.len());
            let (id, state, evicted) = match self.conns.admit(peer.ip(), short) {
                Ok(admitted) => admitted,
                Err(why) => {
                    if let Some(n) = refusal_log.due() {
                        let cap = match why {
                            Refusal::PeerFull => format!(
                                "{} connections from {} already open",
                                limits.max_connections_per_peer,
                                peer.ip()
                            ),
                            Refusal::Full => {
                                format!("{} connections already open", limits.max_connections)
                            }
                            Refusal::Descriptors => {
                                "the process is near its open-files limit".to_string()
                            }
                        };
                        warn!("refused a connection from {peer}: {cap}, none idle ({n} more refused since the last report)");
                    }
                    drop(socket);
                    continue;
                }
            };
            let context = RPCContext {
                policy: self.policy.clone(),
                local_port: self.port,
                client_addr: peer.to_string(),
                auth: crate::rpc::auth_unix::default(),
                vfs: self.arcfs.clone(),
                mount_signal: self.mount_signal.clone(),
            };
            debug!("Accepting connection from {}", context.client_addr);
            let conns = self.conns.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let _admitted = Admitted {
                    conns: conns.clone(),
                    id,
                    state: state.clone(),
                };
                match process_socket(socket, context, &limits, &conns, &state).await {
                    Ok(()) => {}
                    Err(Closed::Routine(e)) => debug!("closed connection from {peer}: {e}"),
                    Err(Closed::Malformed(e)) => {
                        let due = conns.malformed_log.lock().map(|mut l| l.due());
                        if let Ok(Some(n)) = due {
                            warn!("closed connection from {peer}: {e:#} ({n} more closed for malformed calls since the last report)");
                        }
                    }
                }
            });
            if short {
                // Near the limit, wait for the evicted connection to give its descriptor back
                // before taking another, or a flood of connections outruns the evictions.
                for victim in evicted {
                    let _ = timeout(Duration::from_millis(200), victim.closed.notified()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_connections_per_peer: per_peer,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn caps_evict_the_idle_and_refuse_the_busy() {
        let conns = ConnectionTable::new(limits(3, 2));
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let (_, a1, _) = conns.admit(a, false).unwrap();
        let (_, a2, _) = conns.admit(a, false).unwrap();
        a1.reading.store(true, Ordering::Relaxed);
        // a's third evicts its idle second, never its busy first.
        let (_, a3, _) = conns.admit(a, false).unwrap();
        assert!(conns.lock().conns.values().any(|c| Arc::ptr_eq(c, &a1)));
        assert!(!conns.lock().conns.values().any(|c| Arc::ptr_eq(c, &a2)));
        let _permit = a3.slots.clone().try_acquire_owned().unwrap();
        // Both of a's are busy now: a fourth from a is refused.
        assert_eq!(conns.admit(a, false).err(), Some(Refusal::PeerFull));
        let (_, b1, _) = conns.admit(b, false).unwrap();
        // Full: b's second evicts b's first (the only idle one).
        b1.last_active.store(0, Ordering::Relaxed);
        let (id, _, evicted) = conns.admit(b, false).unwrap();
        assert!(evicted.iter().any(|c| Arc::ptr_eq(c, &b1)));
        assert!(!conns.lock().conns.values().any(|c| Arc::ptr_eq(c, &b1)));
        conns.remove(id);
        assert_eq!(conns.lock().conns.len(), 2);
    }

    #[test]
    fn near_the_descriptor_limit_only_an_idle_connection_makes_room() {
        let conns = ConnectionTable::new(limits(100, 100));
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let (_, a1, _) = conns.admit(a, false).unwrap();
        a1.reading.store(true, Ordering::Relaxed);
        assert_eq!(conns.admit(a, true).err(), Some(Refusal::Descriptors));
        a1.reading.store(false, Ordering::Relaxed);
        conns.admit(a, true).unwrap();
        assert!(!conns.lock().conns.values().any(|c| Arc::ptr_eq(c, &a1)));
        // Far from the limit by number and count; near it by the hints, but the count decides.
        assert!(!short_of_descriptors(3, 0));
        assert!(!short_of_descriptors(i32::MAX, usize::MAX));
    }

    fn cpu_time() -> Duration {
        // SAFETY: getrusage writes only into the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let t = |tv: libc::timeval| {
            Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
        };
        t(u.ru_utime) + t(u.ru_stime)
    }

    const CHILD_ENV: &str = "NFSSERVE_EMFILE_CHILD";

    /// Runs in a child process of the test binary, started by
    /// `accept_backs_off_when_out_of_descriptors`: it lowers its own open-files limit, which
    /// must not reach the other tests.
    #[test]
    fn emfile_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lim = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            // SAFETY: setrlimit reads only the struct it is given.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let conns = ConnectionTable::new(ConnectionLimits::default());
            // A connection waits in the backlog; then every descriptor is taken.
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut hog = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                hog.push(f);
            }
            let mut accepting = Accepting::new(0);
            let before = cpu_time();
            let r = timeout(Duration::from_secs(2), accepting.next(&listener, &conns)).await;
            let spent = cpu_time() - before;
            assert!(r.is_err(), "accepted with no descriptor free");
            assert!(
                spent < Duration::from_millis(300),
                "{spent:?} of CPU in 2 s of EMFILE"
            );
            // Descriptors back: the waiting connection is accepted within the longest pause.
            drop(hog);
            let r = timeout(Duration::from_secs(3), accepting.next(&listener, &conns)).await;
            assert!(r.is_ok(), "not accepted after descriptors came back");
            println!("emfile child: {spent:?} of CPU in 2 s of EMFILE, then accepted");
        });
    }

    #[test]
    fn accept_backs_off_when_out_of_descriptors() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["tcp::tests::emfile_child", "--exact", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("emfile child:"), "{text}");
    }

    #[test]
    fn rate_log_reports_suppressed_lines() {
        let mut log = RateLog::new();
        assert_eq!(log.due(), Some(0));
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        log.last = Some(Instant::now() - RateLog::EVERY);
        assert_eq!(log.due(), Some(2));
    }
}
