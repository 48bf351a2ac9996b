//! The tokio side of TFTP: requests arrive on the service port; each read gets its own task
//! and its own socket (a new transfer ID, RFC 1350) bound to the same interface and address.

use std::io::{BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::UdpSocket;

use super::admit::{self, Admission, Refused};
use super::netascii::Netascii;
use super::options::{negotiate, Limits};
use super::packet::{self, ErrorCode, Mode, Packet, Request};
use super::stray::{Strays, Verdict, UNKNOWN_TID};
use super::transfer::{Params, Step, Transfer};
use super::TftpConfig;
use crate::bootfiles::{BootFiles, OpenError};

/// Read-ahead of the file: large enough that small blocks cost one copy, not one syscall each.
/// With [`MAX_WINDOW_BYTES`] it bounds the memory of a transfer.
const READ_AHEAD: usize = 64 * 1024;
/// Bytes of built blocks a window may hold until they are acknowledged: 64 blocks of an
/// Ethernet-sized 1468 bytes fit, a jumbo or loopback block size gets a smaller window.
const MAX_WINDOW_BYTES: usize = 256 * 1024;
/// Largest datagram a client sends to a transfer socket is an ACK or an ERROR; larger junk is
/// truncated by the kernel and then rejected by the parser.
const REPLY_BUF: usize = 2048;
/// Enough of a stray datagram to tell an ERROR or a request from junk; the rest is cut off.
const STRAY_BUF: usize = 600;
/// Malformed datagrams logged at warn per second; the rest go to debug, so that a flood of
/// junk cannot flood the log.
const WARN_BUDGET: u32 = 20;

/// Everything a transfer needs, shared by all of them.
pub struct Service {
    files: Arc<BootFiles>,
    interface: String,
    address: Ipv4Addr,
    config: TftpConfig,
    limits: Limits,
    /// Running transfers and request rates.
    admission: Mutex<Admission>,
    /// Each transfer's end goes to the boot-stage reports.
    stages: crate::stages::Sink,
}

impl Service {
    pub fn new(files: Arc<BootFiles>, interface: &str, address: Ipv4Addr, config: TftpConfig) -> Self {
        let mut max_blksize = config.max_blksize;
        if let Some(mtu) = interface_mtu(interface) {
            // 20 bytes of IPv4, 8 of UDP, 4 of TFTP: a block that fits is never fragmented.
            let fits = mtu.saturating_sub(32).clamp(packet::MIN_BLKSIZE as u32, packet::MAX_BLKSIZE as u32);
            max_blksize = max_blksize.min(fits as u16);
        }
        let limits = Limits {
            max_blksize,
            max_windowsize: config.max_windowsize,
            max_timeout_secs: config.max_client_timeout_secs,
            max_window_bytes: MAX_WINDOW_BYTES,
        };
        let admission = Admission::new(admit::Limits {
            max_transfers: config.max_transfers,
            max_per_host: config.max_transfers_per_host,
            requests: crate::ratelimit::Rate::per_sec(config.requests_per_sec, config.request_burst),
        });
        Service {
            files,
            interface: interface.to_string(),
            address,
            config,
            limits,
            admission: Mutex::new(admission),
            stages: crate::stages::Sink::default(),
        }
    }

    pub fn with_stages(mut self, stages: crate::stages::Sink) -> Self {
        self.stages = stages;
        self
    }

    /// Once per transfer, off its per-block path.
    fn report(&self, peer: SocketAddr, name: &str, bytes: Option<u64>, started: Instant, error: Option<String>) {
        if let IpAddr::V4(ip) = peer.ip() {
            let ms = started.elapsed().as_millis() as u64;
            let protocol = crate::stages::Protocol::Tftp;
            self.stages.record_from(ip, crate::stages::Event::File { name: name.to_string(), protocol, bytes, ms, error });
        }
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running transfer's place in [`Admission`], given back when the transfer ends however it
/// ends.
struct Slot {
    service: Arc<Service>,
    peer: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.service.admission().finish(self.peer);
    }
}

fn interface_mtu(interface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/mtu")).ok()?.trim().parse().ok()
}

/// Counts warnings per second.
struct LogBudget {
    since: Instant,
    used: u32,
}

impl LogBudget {
    fn level(&mut self) -> log::Level {
        if self.since.elapsed() >= Duration::from_secs(1) {
            self.since = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        if self.used <= WARN_BUDGET {
            log::Level::Warn
        } else {
            log::Level::Debug
        }
    }
}

/// Runs the service on a thread of its own with a single-threaded runtime, until it fails.
///
/// A lock-step transfer is a ping-pong of tiny datagrams, so its speed is the latency of one
/// wake-up. A single-threaded runtime wakes the task on the thread that saw the ACK, where the
/// shared multi-threaded one may hand it to another worker; like dnsmasq's single process, one
/// thread also keeps up with a LAN full of PXE clients.
pub async fn run(socket: UdpSocket, service: Arc<Service>) -> anyhow::Result<()> {
    let socket = socket.into_std().context("tftp: detaching the socket")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tftp: starting its runtime")
                .and_then(|rt| {
                    rt.block_on(async {
                        let socket = UdpSocket::from_std(socket)?;
                        serve_requests(socket, service).await
                    })
                });
            let _ = tx.send(served);
        })
        .context("tftp: starting its thread")?;
    rx.await.context("tftp: its thread ended")?
}

/// Serves requests from `socket` until it fails.
async fn serve_requests(socket: UdpSocket, service: Arc<Service>) -> anyhow::Result<()> {
    let local = socket.local_addr()?;
    let cfg = &service.config;
    log::info!(
        "tftp: serving {} on {local} ({}), blksize up to {}, windowsize up to {}, {} transfers \
         ({} per host) of at most {} s",
        service.files.root().display(),
        service.interface,
        service.limits.max_blksize,
        service.limits.max_windowsize,
        cfg.max_transfers,
        cfg.max_transfers_per_host,
        cfg.max_transfer_secs
    );
    let mut buf = vec![0u8; 65536];
    let mut budget = LogBudget { since: Instant::now(), used: 0 };
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier sends surface here on some kernels; they are not fatal.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
            Err(e) => return Err(e).with_context(|| format!("tftp: receiving on {local}")),
        };
        let datagram = &buf[..n];
        match packet::parse(datagram) {
            Ok(Packet::Rrq(_)) => {
                let admitted = service.admission().start(peer, Instant::now());
                if let Err(why) = admitted {
                    let level = if why == Refused::Repeated { log::Level::Debug } else { budget.level() };
                    log::log!(level, "tftp: dropped a request from {peer}: {why}");
                    continue;
                }
                let slot = Slot { service: service.clone(), peer };
                let raw = datagram.to_vec();
                tokio::spawn(async move {
                    if let Err(e) = serve_read(&slot.service, peer, &raw).await {
                        log::warn!("tftp: {peer}: {e:#}");
                    }
                    drop(slot);
                });
            }
            Ok(Packet::Wrq(_)) if service.admission().request(peer, Instant::now()).is_err() => {
                log::log!(budget.level(), "tftp: dropped a write request from {peer}: over its request rate");
            }
            Ok(Packet::Wrq(req)) => {
                log::warn!(
                    "tftp: {peer} tried to write {:?}; this server is read-only",
                    String::from_utf8_lossy(req.filename)
                );
                let service = service.clone();
                tokio::spawn(async move {
                    let sent = async {
                        let sock = service.transfer_socket(peer).await?;
                        send_error(&sock, ErrorCode::AccessViolation, "access violation: read-only server").await
                    };
                    if let Err(e) = sent.await {
                        log::warn!("tftp: {peer}: {e:#}");
                    }
                });
            }
            Ok(other) => log::debug!("tftp: dropped a {} from {peer} on the request port", other.name()),
            Err(e) => log::log!(budget.level(), "tftp: dropped a malformed datagram from {peer}: {e}"),
        }
    }
}

impl Service {
    /// A socket on a fresh port of the service's address and interface, talking to `peer` only.
    async fn transfer_socket(&self, peer: SocketAddr) -> anyhow::Result<UdpSocket> {
        let sock = crate::net::udp_socket(&self.interface, SocketAddr::new(self.address.into(), 0), false)?;
        // Connected: the kernel drops datagrams from any other port or host, which is the
        // transfer-ID check of RFC 1350 done for free.
        sock.connect(peer).await.with_context(|| format!("connecting to {peer}"))?;
        Ok(sock)
    }

    /// The unconnected twin of transfer socket `sock`, on the same address and port. The
    /// kernel hands each datagram to the socket that matches it best, so the peer's still go
    /// to `sock` and this one gets those of everyone else, which RFC 1350 wants answered.
    /// Both carry SO_REUSEADDR (see `net::udp_socket`), which is what lets it bind there.
    fn stray_socket(&self, sock: &UdpSocket) -> anyhow::Result<UdpSocket> {
        let local = sock.local_addr().context("the transfer socket's address")?;
        crate::net::udp_socket(&self.interface, local, false)
            .context("a socket for strays on the transfer's port")
    }
}

/// Datagrams that reach a transfer's port from anyone but its peer.
struct StrayPort {
    sock: UdpSocket,
    strays: Strays,
}

impl StrayPort {
    /// Answers a stray per [`Strays::judge`], without waiting and without allocating.
    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let peer = self.strays.peer();
        match self.strays.judge(datagram, from, Instant::now()) {
            Verdict::Answer { kind } => {
                log::info!(
                    "tftp: {from} sent {kind} to the transfer port of {peer}; answered \"unknown transfer ID\""
                );
                // Never wait on a stray: with the send buffer full the answer is lost like
                // any datagram, and the transfer's own sends go first.
                if let Err(e) = self.sock.try_send_to(UNKNOWN_TID, from) {
                    log::debug!("tftp: answering {from}: {e}");
                }
            }
            Verdict::Drop(why) => {
                log::debug!("tftp: {from} sent a stray datagram to the transfer port of {peer}, not answered: {why:?}")
            }
        }
    }
}

async fn send_error(sock: &UdpSocket, code: ErrorCode, message: &str) -> anyhow::Result<()> {
    let mut out = Vec::new();
    packet::error(&mut out, code, message);
    sock.send(&out).await.context("sending an ERROR")?;
    Ok(())
}

fn open_error(e: &OpenError) -> (ErrorCode, &'static str) {
    match e {
        OpenError::NotFound | OpenError::NotAFile | OpenError::Empty => (ErrorCode::FileNotFound, "file not found"),
        OpenError::Io(_) => (ErrorCode::NotDefined, "cannot read the file"),
        _ => (ErrorCode::AccessViolation, "access violation"),
    }
}

fn describe_options(req: &Request<'_>) -> String {
    let all: Vec<String> = req
        .options()
        .map(|o| format!("{}={}", String::from_utf8_lossy(o.name), String::from_utf8_lossy(o.value)))
        .collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(" ")
    }
}

async fn serve_read(service: &Service, peer: SocketAddr, raw: &[u8]) -> anyhow::Result<()> {
    let Ok(Packet::Rrq(req)) = packet::parse(raw) else {
        anyhow::bail!("request no longer parses");
    };
    let name = String::from_utf8_lossy(req.filename).into_owned();
    let sock = service.transfer_socket(peer).await?;
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    if req.mode == Mode::Mail {
        log::warn!("tftp: {peer} asked for mail mode ({name:?}); refused");
        return send_error(&sock, ErrorCode::IllegalOperation, "mail mode is not supported").await;
    }
    let file = match service.files.open(req.filename) {
        Ok(f) => f,
        Err(e) => {
            if e.is_refusal() {
                log::warn!("tftp: refused {name:?} to {peer}: {e}");
            } else {
                log::info!("tftp: {peer} asked for {name:?}: {e}");
            }
            let (code, msg) = open_error(&e);
            service.report(peer, &name, None, Instant::now(), Some(e.to_string()));
            return send_error(&sock, code, msg).await;
        }
    };
    let neg = negotiate(&req, service.limits, file.len);
    // Reads are served from the page cache and are short, so they run on the task itself
    // like the sends do, rather than costing a hop to the blocking pool per window.
    let reader: Box<dyn Read + Send> = match req.mode {
        Mode::Netascii => Box::new(Netascii::new(BufReader::with_capacity(READ_AHEAD, file.file))),
        _ => Box::new(BufReader::with_capacity(READ_AHEAD, file.file)),
    };
    let cfg = &service.config;
    let params = Params {
        blksize: neg.blksize,
        windowsize: neg.windowsize,
        timeout: neg.timeout.unwrap_or(Duration::from_millis(cfg.timeout_ms.max(1))),
        max_timeout: Duration::from_millis(cfg.max_timeout_ms),
        retries: cfg.retries,
        retries_before_ack: cfg.retries_before_ack,
    };
    // Before the log line, which names the port: from then on a stranger may find it.
    let mut strays =
        StrayPort { sock: service.stray_socket(&sock)?, strays: Strays::new(peer, Instant::now()) };
    log::info!(
        "tftp: {peer} reads {name} ({} bytes, {}, options: {}; blksize {} windowsize {}; from port {port})",
        file.len,
        req.mode.as_str(),
        describe_options(&req),
        params.blksize,
        params.windowsize
    );
    let started = Instant::now();
    let mut t = Transfer::new(reader, params, neg.oack());
    let lifetime = Duration::from_secs(cfg.max_transfer_secs.max(1));
    let result = match tokio::time::timeout(lifetime, drive(&sock, &mut strays, &mut t)).await {
        Ok(r) => r,
        Err(_) => {
            // A client that acknowledges just often enough would otherwise hold its sockets,
            // file and buffers for as long as it likes.
            let _ = send_error(&sock, ErrorCode::NotDefined, "transfer time limit reached").await;
            Err(anyhow::anyhow!("ended at the time limit of {} s", lifetime.as_secs()))
        }
    };
    let secs = started.elapsed().as_secs_f64();
    service.report(peer, &name, Some(t.bytes()), started, result.as_ref().err().map(|e| format!("{e:#}")));
    match result {
        Ok(()) => {
            let mib = t.bytes() as f64 / (1024.0 * 1024.0);
            log::info!(
                "tftp: {peer} got {name}: {} bytes in {secs:.3} s ({:.1} MiB/s)",
                t.bytes(),
                mib / secs.max(1e-6)
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!("transfer of {name} stopped after {} bytes, {secs:.3} s", t.bytes()))),
    }
}

/// Runs the state machine against the socket until the transfer ends.
async fn drive<R: Read>(sock: &UdpSocket, strays: &mut StrayPort, t: &mut Transfer<R>) -> anyhow::Result<()> {
    let mut buf = [0u8; REPLY_BUF];
    let mut stray_buf = [0u8; STRAY_BUF];
    let sleep = tokio::time::sleep(t.timeout());
    tokio::pin!(sleep);
    let mut step = t.start();
    loop {
        match step {
            Step::Send => {
                send_all(sock, t.outgoing()).await.context("sending")?;
                sleep.as_mut().reset(tokio::time::Instant::now() + t.timeout());
            }
            Step::Wait => {}
            Step::Ignored(why) => log::debug!("tftp: dropped a datagram: {why:?}"),
            Step::Done => return Ok(()),
            Step::Abort(why) => {
                send_all(sock, t.outgoing()).await.context("sending an ERROR")?;
                anyhow::bail!(why);
            }
            Step::Failed(why) => anyhow::bail!(why),
        }
        step = tokio::select! {
            biased;
            r = sock.recv(&mut buf) => match r {
                Ok(n) => t.on_packet(&buf[..n]),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    anyhow::bail!("the client's port is closed (it gave up)")
                }
                Err(e) => return Err(e).context("receiving"),
            },
            r = strays.sock.recv_from(&mut stray_buf) => {
                match r {
                    Ok((n, from)) => strays.on_datagram(&stray_buf[..n], from),
                    // Nothing a stranger does may end the transfer, and this socket has no
                    // peer whose ICMP errors would mean anything.
                    Err(e) => log::debug!("tftp: receiving strays for {}: {e}", strays.strays.peer()),
                }
                // The timer runs on: a stray is no sign of life from the peer.
                Step::Wait
            },
            _ = &mut sleep => t.on_timeout(),
        };
    }
}

/// Sends a window with as few syscalls as the kernel allows, without allocating.
async fn send_all<'a>(sock: &UdpSocket, packets: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
    let mut packets = packets.peekable();
    while packets.peek().is_some() {
        let mut batch: [&[u8]; BATCH] = [&[]; BATCH];
        let mut n = 0;
        for p in packets.by_ref().take(BATCH) {
            batch[n] = p;
            n += 1;
        }
        let mut done = 0;
        while done < n {
            done += sock
                .async_io(tokio::io::Interest::WRITABLE, || send_batch(sock.as_raw_fd(), &batch[done..n]))
                .await?;
        }
    }
    Ok(())
}

/// Datagrams per sendmmsg(2) call.
const BATCH: usize = 64;

/// One sendmmsg(2) on a connected socket: a window of 16 blocks costs one syscall instead of
/// 16. Neither tokio nor socket2 offers it, and nix's wrapper allocates per call.
fn send_batch(fd: RawFd, packets: &[&[u8]]) -> std::io::Result<usize> {
    const MAX: usize = BATCH;
    let n = packets.len().min(MAX);
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid (null
    // pointers, zero lengths).
    let mut iov: [libc::iovec; MAX] = unsafe { std::mem::zeroed() };
    let mut hdr: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iov[i] = libc::iovec { iov_base: packets[i].as_ptr() as *mut libc::c_void, iov_len: packets[i].len() };
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `n` iovecs that point into live slices; the kernel only
    // reads them during the call. A connected socket needs no destination address.
    let sent = unsafe { libc::sendmmsg(fd, hdr.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}
