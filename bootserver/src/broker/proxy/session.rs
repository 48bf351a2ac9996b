//! One viewer connection: the RFB handshake as a server, then the relay loop that forwards
//! messages between the viewer and its current VM and performs switches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::backend::{self, BackendError, Ready, Stream};
use super::recode::{self, RecodeError, ZStreams};
use super::rfb::{self, enc, ClientMsg, PixelFormat, ServerFramer, ServerItem};
use super::{auth, vencrypt, Backend, Control, Proxy, ProxyError, SwitchReport};

/// What the relay talks to the viewer through: the TCP stream, or the TLS stream over it.
pub(super) trait ViewerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ViewerIo for T {}
pub(super) type Viewer = Box<dyn ViewerIo>;

/// A viewer that passed the handshake: its session and how it got in.
#[derive(Debug)]
pub(super) struct Authed {
    /// The session's identity (see [`Proxy::attach`]), not the token that opened it.
    pub session: String,
    pub label: String,
    pub backend: Backend,
    /// The security type it used.
    pub security: u8,
}

/// Failed SecurityResult, with its reason from RFB 3.8 on.
async fn refuse<S: AsyncWrite + Unpin>(sock: &mut S, minor: u8, reason: &str) {
    let mut v = 1u32.to_be_bytes().to_vec();
    if minor >= 8 {
        v.extend_from_slice(&(reason.len() as u32).to_be_bytes());
        v.extend_from_slice(reason.as_bytes());
    }
    let _ = sock.write_all(&v).await;
    let _ = sock.flush().await;
}

/// No usable security type: an empty list (a zero type in 3.3) and the reason.
async fn refuse_types<S: AsyncWrite + Unpin>(sock: &mut S, minor: u8, reason: &str) {
    let mut v = if minor == 3 { 0u32.to_be_bytes().to_vec() } else { vec![0] };
    v.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    v.extend_from_slice(reason.as_bytes());
    let _ = sock.write_all(&v).await;
}

/// The server half of the handshake: version, security type (VeNCrypt X509Plain with the token
/// as password; VNC authentication with it where `legacy_vnc_auth` allows), ClientInit. Returns
/// the stream the session goes on over (TLS after VeNCrypt). Generic over the stream so that
/// the fuzz target can drive it from bytes.
pub(super) async fn handshake<S>(proxy: &Proxy, sock: S) -> anyhow::Result<(Authed, Viewer)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match open(proxy, sock).await? {
        Opened::Authed(a, v) => Ok((a, v)),
        Opened::Tls(mut tls, minor) => {
            let head = plain_head(&mut tls).await?;
            plain(proxy, tls, minor, head).await
        }
    }
}

/// How far [`open`] got: authenticated (VNC authentication), or through VeNCrypt's TLS
/// handshake with the Plain credentials next (and the RFB minor version).
pub(super) enum Opened<S> {
    Authed(Authed, Viewer),
    Tls(tokio_rustls::server::TlsStream<S>, u8),
}

/// The Plain message's lengths: the first bytes a viewer sends once TLS is up. A viewer on
/// standby sends them only once its PC has a login.
async fn plain_head<S: AsyncRead + Unpin>(tls: &mut S) -> anyhow::Result<[u8; 8]> {
    let mut head = [0u8; 8];
    tls.read_exact(&mut head).await.context("reading the Plain credentials")?;
    Ok(head)
}

/// The rest of the Plain message after `head`, the token's check, SecurityResult, ClientInit.
async fn plain<S>(
    proxy: &Proxy,
    mut tls: tokio_rustls::server::TlsStream<S>,
    minor: u8,
    head: [u8; 8],
) -> anyhow::Result<(Authed, Viewer)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pass) = vencrypt::plain_lengths(head)?;
    let mut body = vec![0u8; user + pass];
    tls.read_exact(&mut body).await.context("reading the Plain credentials")?;
    let password = vencrypt::plain_password(&body, user)?;
    let found = proxy.authenticate_token(&password);
    let authed = finish(proxy, &mut tls, minor, found, vencrypt::SECURITY_TYPE).await?;
    Ok((authed, Box::new(tls)))
}

/// The handshake up to the Plain credentials (VeNCrypt) or to the end (VNC authentication).
pub(super) async fn open<S>(proxy: &Proxy, mut sock: S) -> anyhow::Result<Opened<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    sock.write_all(b"RFB 003.008\n").await?;
    let mut v = [0u8; 12];
    sock.read_exact(&mut v).await.context("reading protocol version")?;
    let (major, minor) = rfb::parse_version(&v).context("protocol version")?;
    // RFC 6143: any other 3.x version must be treated as 3.3.
    let minor: u8 = match (major, minor) {
        (3, 7) => 7,
        (3, m) if m >= 8 => 8,
        (3, _) => 3,
        _ => bail!("unsupported RFB version {major}.{minor}"),
    };
    let offered = proxy.security_types();
    if offered.is_empty() {
        refuse_types(&mut sock, minor, "this proxy has no certificate and VNC authentication is off").await;
        bail!("no security type to offer: no TLS certificate, and legacy_vnc_auth is off");
    }
    let chosen = if minor == 3 {
        // 3.3 lets the server pick, among None and VNC authentication only.
        if !offered.contains(&vencrypt::VNC_AUTH) {
            refuse_types(&mut sock, minor, "RFB 3.3 cannot do VeNCrypt, which this proxy requires").await;
            bail!("RFB 3.3 viewer, and VNC authentication is off (legacy_vnc_auth)");
        }
        sock.write_all(&u32::from(vencrypt::VNC_AUTH).to_be_bytes()).await?;
        vencrypt::VNC_AUTH
    } else {
        let mut list = vec![offered.len() as u8];
        list.extend_from_slice(&offered);
        sock.write_all(&list).await?;
        let mut chosen = [0u8; 1];
        sock.read_exact(&mut chosen).await.context("reading the security type")?;
        if !offered.contains(&chosen[0]) {
            refuse(&mut sock, minor, "security type not offered").await;
            bail!("chose security type {}, offered were {offered:?}", chosen[0]);
        }
        chosen[0]
    };
    if chosen == vencrypt::VNC_AUTH {
        let found = vnc_auth(proxy, &mut sock).await?;
        let authed = finish(proxy, &mut sock, minor, found, chosen).await?;
        return Ok(Opened::Authed(authed, Box::new(sock)));
    }
    let Some(tls) = &proxy.opts.tls else { bail!("VeNCrypt chosen without a certificate") };
    sock.write_all(&vencrypt::VERSION).await?;
    exchange(&mut sock, "version", vencrypt::version_reply, &vencrypt::VERSION_REFUSED).await?;
    exchange(&mut sock, "subtype", vencrypt::subtype_reply, &vencrypt::SUBTYPE_REFUSED).await?;
    let tls = tls.0.accept(sock).await.context("TLS handshake")?;
    Ok(Opened::Tls(tls, minor))
}

/// One VeNCrypt step before TLS: the viewer's `N` bytes, then the answer `reply` makes of
/// them, or the refusal (after which the viewer is dropped).
async fn exchange<S, const N: usize, R>(
    sock: &mut S,
    what: &str,
    reply: impl FnOnce([u8; N]) -> Result<R, vencrypt::VencryptError>,
    refusal: &[u8],
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsRef<[u8]>,
{
    let mut got = [0u8; N];
    sock.read_exact(&mut got).await.with_context(|| format!("reading the VeNCrypt {what}"))?;
    match reply(got) {
        Ok(answer) => Ok(sock.write_all(answer.as_ref()).await?),
        Err(e) => {
            let _ = sock.write_all(refusal).await;
            Err(e.into())
        }
    }
}

/// VNC authentication: a fresh challenge, and the session whose token answers it.
async fn vnc_auth<S: AsyncRead + AsyncWrite + Unpin>(
    proxy: &Proxy,
    sock: &mut S,
) -> anyhow::Result<Option<(String, String, Backend)>> {
    let challenge = auth::new_challenge();
    sock.write_all(&challenge).await?;
    let mut response = [0u8; 16];
    sock.read_exact(&mut response).await.context("reading the authentication response")?;
    Ok(proxy.authenticate(&challenge, &response))
}

/// SecurityResult for the session found (or not), then ClientInit.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    proxy: &Proxy,
    sock: &mut S,
    minor: u8,
    found: Option<(String, String, Backend)>,
    security: u8,
) -> anyhow::Result<Authed> {
    let Some((session, label, backend)) = found else {
        tokio::time::sleep(proxy.opts.auth_fail_delay).await;
        refuse(sock, minor, "unknown or expired session token").await;
        bail!("refused: no session has that token (security type {security})");
    };
    sock.write_all(&0u32.to_be_bytes()).await?;
    sock.flush().await?;
    let mut shared = [0u8; 1];
    sock.read_exact(&mut shared).await.context("reading ClientInit")?;
    Ok(Authed { session, label, backend, security })
}

pub(crate) async fn run(proxy: Arc<Proxy>, sock: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
    // A viewer that connects and stalls would hold its place for ever; the TLS handshake
    // counts too.
    let limit = proxy.opts.handshake_timeout;
    let late = || anyhow::anyhow!("no complete RFB handshake within {limit:?}");
    let mut t_hs = Instant::now();
    let opened = tokio::time::timeout(limit, open(&proxy, sock)).await.map_err(|_| late())??;
    // The session's identity, not its token: the token may be rotated under this connection.
    let (Authed { session, label, backend, security }, mut sock) = match opened {
        Opened::Authed(a, v) => (a, v),
        Opened::Tls(mut tls, minor) => {
            let left = limit.saturating_sub(t_hs.elapsed());
            // A PC's viewer on standby waits here for a login at its form: longer than a
            // handshake may take, and for one connection per address only.
            let standby = proxy.standby(peer.ip());
            let wait = standby.as_ref().map_or(left, |_| proxy.opts.standby_timeout.max(left));
            let head = tokio::time::timeout(wait, plain_head(&mut tls)).await.map_err(|_| {
                let what = if standby.is_some() { "on standby" } else { "after the TLS handshake" };
                anyhow::anyhow!("no credentials within {wait:?} {what}")
            })??;
            drop(standby);
            // What is left is as quick as any handshake, and timed as one.
            t_hs = Instant::now();
            tokio::time::timeout(limit, plain(&proxy, tls, minor, head)).await.map_err(|_| late())??
        }
    };
    let how = if security == vencrypt::SECURITY_TYPE { "VeNCrypt X509Plain" } else { "VNC authentication" };
    log::info!(
        "proxy: viewer {peer} authenticated for session {label} ({how}, handshake {:.1} ms), VM {}",
        t_hs.elapsed().as_secs_f64() * 1000.0,
        backend.describe()
    );
    let t0 = Instant::now();
    let (vm, init) = backend::connect(&backend).await.with_context(|| format!("session {label}"))?;
    log::info!("proxy: session {label}: VM answered in {} ms", t0.elapsed().as_millis());
    sock.write_all(&init.to_bytes()).await?;
    sock.flush().await?;
    let (tx, rx) = mpsc::channel(4);
    let Some((conn, recoded)) = proxy.attach(&session, tx) else {
        bail!("session {label} closed during the handshake");
    };
    let mut relay = Relay {
        proxy: proxy.clone(),
        session: session.clone(),
        label: label.clone(),
        viewer: sock,
        vm: Some(vm),
        format: init.format,
        encodings: Vec::new(),
        width: init.width,
        height: init.height,
        framer: ServerFramer::default(),
        vm_buf: Vec::new(),
        viewer_buf: Vec::new(),
        tight_reset_due: false,
        zstreams: ZStreams::default(),
        recoded,
        orphaned_at: None,
    };
    let res = relay.run(rx).await;
    proxy.detach(&session, conn);
    log::info!("proxy: viewer {peer} of session {label} left after {:.1} s", t0.elapsed().as_secs_f64());
    res
}

struct Pending {
    task: JoinHandle<Result<Ready, BackendError>>,
    reply: oneshot::Sender<Result<SwitchReport, ProxyError>>,
    backend: Backend,
    started: Instant,
}

struct Relay {
    proxy: Arc<Proxy>,
    session: String,
    label: String,
    viewer: Viewer,
    vm: Option<Stream>,
    /// The viewer's pixel format (ServerInit's until it sends SetPixelFormat).
    format: PixelFormat,
    /// The viewer's encodings, unfiltered.
    encodings: Vec<i32>,
    /// The framebuffer size the viewer believes in.
    width: u16,
    height: u16,
    framer: ServerFramer,
    vm_buf: Vec<u8>,
    viewer_buf: Vec<u8>,
    /// Set at a swap: the next Tight rectangle must reset the viewer's zlib streams.
    tight_reset_due: bool,
    /// ZRLE and Zlib: the viewer's deflaters (kept across switches) and the VM's inflaters.
    zstreams: ZStreams,
    recoded: Arc<AtomicU64>,
    orphaned_at: Option<Instant>,
}

async fn read_some(s: &mut Option<Stream>, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    match s {
        Some(s) => {
            buf.reserve(64 << 10);
            s.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

impl Relay {
    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        // TLS keeps records the socket could not take yet until the next write or a flush.
        self.viewer.write_all(bytes).await.context("writing to the viewer")?;
        self.viewer.flush().await.context("writing to the viewer")
    }

    async fn run(&mut self, mut ctl: mpsc::Receiver<Control>) -> anyhow::Result<()> {
        let mut pending: Option<Pending> = None;
        loop {
            let orphan_deadline = self.orphaned_at.map(|t| t + self.proxy.opts.orphan_timeout);
            tokio::select! {
                n = self.viewer.read_buf(&mut self.viewer_buf) => {
                    if n.context("reading from the viewer")? == 0 {
                        return Ok(());
                    }
                    self.from_viewer().await?;
                }
                n = read_some(&mut self.vm, &mut self.vm_buf) => {
                    match n {
                        Ok(n) if n > 0 => {
                            if let Err(e) = self.from_vm().await {
                                if e.downcast_ref::<rfb::RfbError>().is_some() {
                                    log::warn!("proxy: session {}: VM stream: {e:#}; dropping the VM connection", self.label);
                                    self.lose_vm().await?;
                                } else {
                                    return Err(e);
                                }
                            }
                        }
                        res => {
                            log::warn!("proxy: session {}: VM connection lost ({}); viewer kept, waiting for a new VM",
                                self.label, res.err().map_or("closed".to_string(), |e| e.to_string()));
                            self.lose_vm().await?;
                        }
                    }
                }
                done = async { (&mut pending.as_mut().expect("guarded").task).await }, if pending.is_some() => {
                    let p = pending.take().expect("guarded");
                    let res = match done {
                        Ok(Ok(ready)) => self.swap(ready, &p).await.map_err(|e| match e.downcast::<BackendError>() {
                            Ok(b) => ProxyError::Backend(b),
                            Err(e) => ProxyError::Abandoned(format!("{e:#}")),
                        }),
                        Ok(Err(e)) => Err(ProxyError::Backend(e)),
                        Err(e) => Err(ProxyError::Abandoned(format!("preparing task failed: {e}"))),
                    };
                    let failed_write = matches!(&res, Err(ProxyError::Abandoned(_)));
                    if let Err(e) = &res {
                        log::warn!("proxy: session {}: switch to {} failed: {e}", self.label, p.backend.describe());
                    }
                    let _ = p.reply.send(res);
                    if failed_write {
                        bail!("viewer lost during the switch");
                    }
                }
                c = ctl.recv() => match c {
                    Some(Control::Switch { backend, reply }) => {
                        if let Some(old) = pending.take() {
                            old.task.abort();
                            let _ = old.reply.send(Err(ProxyError::Abandoned("superseded by a newer switch".into())));
                        }
                        log::info!("proxy: session {}: preparing switch to VM {}", self.label, backend.describe());
                        let (b, pf, encs) = (backend.clone(), self.format, rfb::filter_encodings(&self.encodings));
                        let (timeout, settle) = (self.proxy.opts.switch_timeout, self.proxy.opts.switch_settle);
                        let task = tokio::spawn(async move { backend::prepare(&b, pf, encs, timeout, settle).await });
                        pending = Some(Pending { task, reply, backend, started: Instant::now() });
                    }
                    Some(Control::Close) | None => {
                        log::info!("proxy: session {}: closed by the broker", self.label);
                        return Ok(());
                    }
                },
                _ = async { tokio::time::sleep_until(orphan_deadline.expect("guarded").into()).await }, if orphan_deadline.is_some() => {
                    bail!("no VM for {:?}; giving up on the viewer", self.proxy.opts.orphan_timeout);
                }
            }
        }
    }

    /// Forwards complete viewer messages to the VM, remembering format and encodings.
    async fn from_viewer(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((msg, len)) = rfb::parse_client(&self.viewer_buf[at..]).context("viewer stream")? {
            let raw = &self.viewer_buf[at..at + len];
            match msg {
                ClientMsg::SetPixelFormat(pf) => {
                    // Like viewers themselves, assume the VM applies it from the next update on.
                    self.format = pf;
                    out.extend_from_slice(raw);
                }
                ClientMsg::SetEncodings(list) => {
                    let offered = rfb::filter_encodings(&list);
                    log::debug!("proxy: session {}: viewer encodings {list:?}, offered to VM {offered:?}", self.label);
                    self.encodings = list;
                    out.extend(rfb::set_encodings(&offered));
                }
                ClientMsg::UpdateRequest { .. } | ClientMsg::Input => out.extend_from_slice(raw),
            }
            at += len;
        }
        self.viewer_buf.drain(..at);
        if let (Some(vm), false) = (self.vm.as_mut(), out.is_empty()) {
            if let Err(e) = vm.write_all(&out).await {
                log::warn!("proxy: session {}: writing to VM: {e}; viewer kept, waiting for a new VM", self.label);
                self.lose_vm().await?;
            }
        }
        Ok(())
    }

    /// Forwards complete messages and rectangles from the VM to the viewer.
    async fn from_vm(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((item, len)) = self.framer.next(&self.vm_buf[at..], &self.format)? {
            let start = out.len();
            let raw = &self.vm_buf[at..at + len];
            match item {
                ServerItem::Rect { encoding, .. } if recode::recoded(encoding) => {
                    match self.zstreams.recode(raw, &mut out) {
                        Ok(()) => _ = self.recoded.fetch_add(1, Ordering::Relaxed),
                        Err(RecodeError::Vm(e)) => {
                            // What went before this rectangle is good: send it and an empty
                            // rectangle in its place, so the update's count still holds; then the
                            // VM is dropped (and the rest of its update closed).
                            out.truncate(start);
                            out.extend(rfb::close_update(Some(1)));
                            self.send(&out).await?;
                            return Err(e.into());
                        }
                        Err(RecodeError::Viewer(e)) => bail!("session {}: {e}", self.label),
                    }
                }
                _ => out.extend_from_slice(raw),
            }
            if let ServerItem::Rect { width, height, encoding, .. } = item {
                match encoding {
                    enc::TIGHT if self.tight_reset_due => {
                        out[start + rfb::TIGHT_CONTROL_OFFSET] |= rfb::TIGHT_RESET_ALL;
                        self.tight_reset_due = false;
                    }
                    enc::DESKTOP_SIZE | enc::EXT_DESKTOP_SIZE => (self.width, self.height) = (width, height),
                    _ => {}
                }
            }
            at += len;
            // Flush big updates rectangle by rectangle rather than holding them.
            if out.len() > 1 << 20 {
                self.send(&out).await?;
                out.clear();
            }
        }
        self.vm_buf.drain(..at);
        self.send(&out).await?;
        Ok(())
    }

    /// The VM went away: close its open update so the viewer stays in step, and wait.
    async fn lose_vm(&mut self) -> anyhow::Result<()> {
        self.vm = None;
        self.zstreams.new_vm();
        if let Some(open) = self.framer.open_update() {
            self.send(&rfb::close_update(open)).await?;
        }
        self.framer.reset();
        self.vm_buf.clear();
        self.orphaned_at = Some(Instant::now());
        Ok(())
    }

    async fn swap(&mut self, mut ready: Ready, p: &Pending) -> anyhow::Result<SwitchReport> {
        let t_swap = Instant::now();
        log::debug!(
            "proxy: session {}: swapping: old VM's open update {:?}, {} bytes buffered from the new VM, its first frame {} ms ago",
            self.label,
            self.framer.open_update(),
            ready.buffered.len(),
            p.started.elapsed().saturating_sub(ready.first_frame_in).as_millis()
        );
        // The old VM's partial update ends here, at a rectangle boundary.
        if let Some(open) = self.framer.open_update() {
            self.send(&rfb::close_update(open)).await?;
        }
        self.vm = None;
        let resized = (ready.init.width, ready.init.height) != (self.width, self.height);
        if resized {
            let msg = if self.encodings.contains(&enc::DESKTOP_SIZE) {
                rfb::desktop_size_update(ready.init.width, ready.init.height)
            } else if self.encodings.contains(&enc::EXT_DESKTOP_SIZE) {
                rfb::ext_desktop_size_update(ready.init.width, ready.init.height)
            } else {
                bail!(
                    "new VM's screen is {}x{}, the viewer's {}x{}, and the viewer cannot be resized (no DesktopSize)",
                    ready.init.width,
                    ready.init.height,
                    self.width,
                    self.height
                );
            };
            self.send(&msg).await?;
            (self.width, self.height) = (ready.init.width, ready.init.height);
        }
        // The viewer changed its format or encodings while the new VM was being prepared: the
        // buffered frame is stale, ask again.
        let offered = rfb::filter_encodings(&self.encodings);
        if ready.format != self.format || ready.encodings != offered {
            let mut again = rfb::set_pixel_format(&self.format);
            again.extend(rfb::set_encodings(&offered));
            again.extend(rfb::update_request(false, self.width, self.height));
            ready.stream.write_all(&again).await?;
            ready.buffered.clear();
        }
        self.vm = Some(ready.stream);
        self.vm_buf = ready.buffered;
        self.framer = ServerFramer::default();
        self.zstreams.new_vm();
        self.tight_reset_due = true;
        self.orphaned_at = None;
        if let Err(e) = self.from_vm().await {
            let Some(bad) = e.downcast_ref::<rfb::RfbError>() else { return Err(e) };
            // The new VM's first frame did not recode: the viewer stays, without a VM.
            let err = BackendError::Protocol { addr: p.backend.describe(), message: bad.to_string() };
            self.lose_vm().await?;
            return Err(err.into());
        }
        self.proxy.set_backend(&self.session, p.backend.clone());
        let report = SwitchReport {
            viewer_connected: true,
            connect_ms: ready.connected_in.as_millis() as u64,
            first_frame_ms: ready.first_frame_in.as_millis() as u64,
            swapped_ms: p.started.elapsed().as_millis() as u64,
            resized,
            width: self.width,
            height: self.height,
        };
        log::info!(
            "proxy: session {}: switched to VM {} (connect {} ms, first frame {} ms, swap {} ms{})",
            self.label,
            p.backend.describe(),
            report.connect_ms,
            report.first_frame_ms,
            t_swap.elapsed().as_millis(),
            if resized { ", resized" } else { "" }
        );
        Ok(report)
    }
}
