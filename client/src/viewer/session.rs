//! One RFB connection after the other: connect, apply what the server sends to the shared
//! framebuffer, forward input, and on any failure show why and reconnect with backoff.
//!
//! vnc-rs reads and decodes on its own tokio task and writes decoded rows straight into the
//! framebuffer ([`Shared`] is its [`vnc::PixelSink`]); this task forwards input, paces update
//! requests and handles the remaining events. The presenter runs on the main thread and never
//! waits for the network.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use vnc::{PixelFormat, VncClient, VncConnector, VncEncoding, VncEvent, X11Event};

use super::framebuffer::{Cursor, Framebuffer, Rect};
use super::jpeg::JpegPool;
use super::input::InputEvent;

/// Where the VNC server is.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Target {
    /// `HOST:PORT`, `HOST` (port 5900), `HOST::PORT` or `unix:PATH`.
    pub(crate) fn parse(s: &str) -> anyhow::Result<Target> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        if let Some((h, p)) = s.split_once("::") {
            let port: u16 = p.parse().with_context(|| format!("port in {s:?}"))?;
            return Ok(Target::Tcp(format!("{h}:{port}")));
        }
        if s.starts_with('[') || s.matches(':').count() == 1 {
            let (_, p) = s.rsplit_once(':').ok_or_else(|| anyhow!("no port in {s:?}"))?;
            p.parse::<u16>().with_context(|| format!("port in {s:?}"))?;
            return Ok(Target::Tcp(s.to_string()));
        }
        if s.is_empty() {
            bail!("empty server address");
        }
        Ok(Target::Tcp(format!("{s}:5900")))
    }
}

/// Which encodings to ask for, most preferred first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Encoding {
    /// Tight with JPEG for photo-like areas (lossy, smallest).
    TightJpeg,
    /// Tight without JPEG (lossless).
    Tight,
    Zrle,
    Trle,
    Raw,
}

/// What VeNCrypt servers are checked against.
#[derive(Clone)]
pub(crate) struct Tls {
    pub config: Arc<vnc::rustls::ClientConfig>,
    /// Where the CA came from, for messages.
    pub origin: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls(CA of {})", self.origin)
    }
}

/// The password, known from the start or handed over later (`--standby`): a connection gets
/// as far as it can without it and waits there.
#[derive(Clone)]
pub(crate) struct Password(watch::Receiver<Option<Option<String>>>);

impl Password {
    /// A password known now (`None`: the server is not expected to ask for one).
    pub(crate) fn known(p: Option<String>) -> Password {
        Password(watch::channel(Some(p)).1)
    }

    /// A password that comes later, through the returned sender.
    pub(crate) fn later() -> (watch::Sender<Option<Option<String>>>, Password) {
        let (tx, rx) = watch::channel(None);
        (tx, Password(rx))
    }

    /// Waits until the password is known; `Err` when it never will be (its sender is gone).
    async fn get(&self) -> Result<Option<String>, vnc::VncError> {
        let mut rx = self.0.clone();
        let got = rx.wait_for(Option::is_some).await.map_err(|_| vnc::VncError::NoPassword)?;
        Ok(got.clone().flatten())
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.borrow().is_some() { "Password(known)" } else { "Password(pending)" })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub target: Target,
    pub password: Password,
    /// VeNCrypt X509Plain is used whenever the server offers it and this is set.
    pub tls: Option<Tls>,
    /// Answer VNC authentication when the server offers nothing better.
    pub allow_vnc_auth: bool,
    pub encoding: Encoding,
    pub jpeg_quality: u8,
    pub compress_level: Option<u8>,
    /// Reconnect after failures; off: the first failure ends the viewer.
    pub reconnect: bool,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// Added to every status line, and shown alone for [`HINT_FOR`] after the desktop appears.
    pub logout_hint: Option<String>,
}

/// How long the logout keys stay on screen once the desktop is up: long enough to be read,
/// and then the desktop's top rows are the person's again.
const HINT_FOR: Duration = Duration::from_secs(15);
/// A timer that is not running (tokio's sleeps need some deadline).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl SessionConfig {
    fn encodings(&self) -> Vec<VncEncoding> {
        let mut v = match self.encoding {
            Encoding::TightJpeg | Encoding::Tight => vec![VncEncoding::Tight],
            Encoding::Zrle => vec![VncEncoding::Zrle],
            Encoding::Trle => vec![VncEncoding::Trle],
            Encoding::Raw => vec![],
        };
        v.extend([
            VncEncoding::CopyRect,
            VncEncoding::Raw,
            VncEncoding::CursorPseudo,
            VncEncoding::DesktopSizePseudo,
            VncEncoding::ExtendedDesktopSizePseudo,
            VncEncoding::LastRectPseudo,
        ]);
        if self.encoding == Encoding::TightJpeg {
            v.push(VncEncoding::jpeg_quality(self.jpeg_quality));
        }
        if let Some(c) = self.compress_level {
            v.push(VncEncoding::compress_level(c));
        }
        v
    }
}

/// What the presenter draws, shared with the session task.
#[derive(Default)]
pub(crate) struct Screen {
    pub fb: Framebuffer,
    /// Bumped on every desktop size change, so presenters rebuild their textures.
    pub size_gen: u64,
    pub status: Option<String>,
    pub status_gen: u64,
    pub cursor: Option<Cursor>,
    pub cursor_gen: u64,
}

pub(crate) struct Shared {
    screen: Mutex<Screen>,
    pub quit: AtomicBool,
    /// The logout keys were pressed (implies `quit`).
    logout: AtomicBool,
    hint: std::sync::OnceLock<String>,
    /// Complete framebuffer updates received in the current connection.
    frames: watch::Sender<u64>,
    /// The presenter has shown this connection's first frame (logged once per connection: the
    /// login benchmark reads that line as the desktop's arrival on the screen).
    shown: AtomicBool,
    /// Gets one byte at each connection's first frame drawn (`--shown-fd`): the agent's signal
    /// that the person sees the desktop.
    shown_signal: Mutex<Option<std::fs::File>>,
    /// Set by the session after every change, read by presenters to skip idle polls cheaply.
    dirty: AtomicU64,
    /// Pixels arrived since the last complete update (set on the decoding task).
    painted: AtomicBool,
    /// The desktop changed size since the last complete update.
    resized: AtomicBool,
    /// Decodes Tight's JPEG rectangles, on other threads where there are cores for them.
    jpeg: JpegPool,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new_cyclic(|me: &Weak<Shared>| {
            // The decoding threads write into the screen; a weak reference, so that they do
            // not keep it alive (they end when the pool goes with it).
            let me = me.clone();
            let put = move |r: Rect, pixels: &[u8]| match me.upgrade() {
                Some(s) => s.lock().fb.put_bgrx(r, pixels),
                None => Ok(()),
            };
            Shared {
                screen: Mutex::new(Screen::default()),
                quit: AtomicBool::new(false),
                logout: AtomicBool::new(false),
                hint: std::sync::OnceLock::new(),
                frames: watch::channel(0).0,
                shown: AtomicBool::new(false),
                shown_signal: Mutex::new(None),
                dirty: AtomicU64::new(0),
                painted: AtomicBool::new(false),
                resized: AtomicBool::new(false),
                jpeg: JpegPool::new(Arc::new(put)),
            }
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Screen> {
        // A panic elsewhere must not take the picture with it.
        self.screen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn dirty(&self) -> u64 {
        self.dirty.load(Ordering::Acquire)
    }

    fn touch(&self) {
        self.dirty.fetch_add(1, Ordering::AcqRel);
    }

    /// Shows `text` with the logout hint, or the hint alone.
    pub(crate) fn set_status(&self, text: Option<String>) {
        let text = match (text, self.hint.get()) {
            (Some(t), Some(h)) => Some(format!("{t} | {h}")),
            (t, h) => t.or(h.cloned()),
        };
        self.set_status_only(text);
    }

    /// Shows exactly `text` (`None`: no status line at all).
    pub(crate) fn set_status_only(&self, text: Option<String>) {
        let mut s = self.lock();
        if s.status != text {
            if let Some(t) = &text {
                info!("status: {t}");
            }
            s.status = text;
            s.status_gen += 1;
            drop(s);
            self.touch();
        }
    }

    /// A presenter put the screen's pixels on the display: the first time in a connection
    /// after a complete update, that is logged and signalled.
    pub(crate) fn presented(&self) {
        if *self.frames.borrow() > 0 && !self.shown.swap(true, Ordering::AcqRel) {
            info!("first frame drawn");
            self.signal_shown();
        }
    }

    /// Where to signal each connection's first frame drawn.
    pub(crate) fn set_shown_signal(&self, f: std::fs::File) {
        *self.shown_signal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(f);
    }

    fn signal_shown(&self) {
        use std::io::Write;
        let mut g = self.shown_signal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = g.as_mut() {
            // A pipe with a byte per connection never fills; a reader that went away only
            // loses the signal, never the desktop.
            if let Err(e) = f.write_all(b"S") {
                log::warn!("signalling the first frame drawn: {e}; not signalling again");
                *g = None;
            }
        }
    }

    pub(crate) fn frames(&self) -> watch::Receiver<u64> {
        self.frames.subscribe()
    }

    pub(crate) fn set_logout_hint(&self, hint: String) {
        let _ = self.hint.set(hint);
    }

    pub(crate) fn request_logout(&self) {
        self.logout.store(true, Ordering::Release);
        self.request_quit();
    }

    pub(crate) fn logging_out(&self) -> bool {
        self.logout.load(Ordering::Acquire)
    }

    pub(crate) fn request_quit(&self) {
        self.quit.store(true, Ordering::Release);
        self.touch();
    }

    pub(crate) fn quitting(&self) -> bool {
        self.quit.load(Ordering::Acquire)
    }
}

fn rect(r: vnc::Rect) -> Rect {
    Rect::new(r.x.into(), r.y.into(), r.width.into(), r.height.into())
}

/// vnc-rs writes decoded rectangles straight into the screen (see [`vnc::PixelSink`]): no
/// per-rectangle buffers queued between its decoder and this task. The lock is held only for
/// the copy, never while reading or decoding, so the presenter is not held up. JPEG
/// rectangles may still be decoding on other threads: whatever touches their place waits.
impl vnc::PixelSink for Shared {
    fn resize(&self, width: u16, height: u16) {
        let (w, h) = (u32::from(width), u32::from(height));
        // Rectangles of the old size go in first (an error there comes with the next one).
        let _ = self.jpeg.flush();
        let mut s = self.lock();
        // Servers repeat the size in every layout announcement: only a change clears the screen.
        if s.fb.width() == w && s.fb.height() == h {
            return;
        }
        info!("desktop is {w}x{h}");
        s.fb.resize(w, h);
        s.size_gen += 1;
        drop(s);
        self.resized.store(true, Ordering::Release);
        // Presenters take the new size now, before the first pixels arrive.
        self.touch();
    }

    fn put(&self, r: vnc::Rect, pixels: &[u8]) -> Result<(), String> {
        self.painted.store(true, Ordering::Release);
        self.jpeg.wait_for(rect(r))?;
        self.lock().fb.put_bgrx(rect(r), pixels).map_err(|e| format!("{e:#}"))
    }

    fn copy(&self, dst: vnc::Rect, src: vnc::Rect) -> Result<(), String> {
        self.painted.store(true, Ordering::Release);
        self.jpeg.wait_for(rect(dst))?;
        self.jpeg.wait_for(rect(src))?;
        self.lock().fb.copy_rect(rect(dst), src.x.into(), src.y.into()).map_err(|e| format!("{e:#}"))
    }

    fn jpeg(&self, r: vnc::Rect, jpeg: &[u8]) -> Result<(), String> {
        self.painted.store(true, Ordering::Release);
        // Two JPEG rectangles on the same place must land in order too.
        self.jpeg.wait_for(rect(r))?;
        self.jpeg.submit(rect(r), jpeg)
    }

    fn flush(&self) -> Result<(), String> {
        self.jpeg.flush()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// A connection that lived this long was healthy: the next failure starts the backoff anew.
const HEALTHY: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until the user quits (or, without reconnect, until the first connection ends).
pub(crate) async fn run(
    cfg: SessionConfig,
    shared: Arc<Shared>,
    mut input: mpsc::UnboundedReceiver<InputEvent>,
) -> anyhow::Result<()> {
    let mut delay = BACKOFF_MIN;
    if let Some(h) = &cfg.logout_hint {
        shared.set_logout_hint(h.clone());
    }
    loop {
        if shared.quitting() {
            return Ok(());
        }
        shared.set_status(Some(format!("Connecting to {}...", cfg.target)));
        let started = Instant::now();
        let result = connect_and_run(&cfg, &shared, &mut input).await;
        if shared.quitting() {
            return Ok(());
        }
        // The same password would be refused again: a session token that the broker has
        // since replaced. Exit, so that whoever started us starts us with the current one.
        let refused = matches!(
            result.as_ref().err().and_then(|e| e.downcast_ref::<vnc::VncError>()),
            Some(vnc::VncError::WrongPassword)
        );
        let why = match result {
            Ok(()) => "the server closed the connection".to_string(),
            Err(e) => format!("{e:#}"),
        };
        warn!("{}: {why}", cfg.target);
        if !cfg.reconnect || refused {
            shared.set_status(Some(format!("{}: {why}", cfg.target)));
            shared.request_quit();
            return Err(anyhow!("{}: {why}", cfg.target));
        }
        if started.elapsed() > HEALTHY {
            delay = BACKOFF_MIN;
        }
        let until = Instant::now() + delay;
        while Instant::now() < until && !shared.quitting() {
            let left = until.saturating_duration_since(Instant::now()).as_secs_f32();
            shared.set_status(Some(format!("{}: {why} - retrying in {left:.0} s", cfg.target)));
            // Input typed while disconnected goes nowhere, except the quit chord.
            let tick = tokio::time::sleep(Duration::from_millis(250));
            tokio::select! {
                _ = tick => {}
                Some(ev) = input.recv() => match ev {
                    InputEvent::Quit => shared.request_quit(),
                    // Logging out needs no desktop: the agent tells the broker.
                    InputEvent::Logout => shared.request_logout(),
                    _ => {}
                }
            }
        }
        delay = (delay * 2).min(cfg.backoff_max.max(BACKOFF_MIN));
    }
}

async fn connect_and_run(
    cfg: &SessionConfig,
    shared: &Arc<Shared>,
    input: &mut mpsc::UnboundedReceiver<InputEvent>,
) -> anyhow::Result<()> {
    let client = match &cfg.target {
        Target::Tcp(addr) => {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}"))?
                .context("connecting")?;
            s.set_nodelay(true).ok();
            handshake(s, cfg, server_name(addr), shared).await?
        }
        Target::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await.context("connecting")?;
            handshake(s, cfg, None, shared).await?
        }
    };
    let result = drive(&client, shared, input).await;
    let _ = client.close().await;
    // JPEG rectangles of this connection still in flight, or their failure, are not the next
    // connection's business.
    shared.jpeg.reset();
    result
}

/// The name a TCP server's certificate must carry: its address as dialled (the boot server's
/// certificate names its addresses and its host name).
fn server_name(addr: &str) -> Option<vnc::rustls::pki_types::ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    vnc::rustls::pki_types::ServerName::try_from(host.to_string()).ok()
}

/// Why a handshake failed, in words for the status line: a certificate the CA does not vouch
/// for, or a server that offers only VNC authentication.
fn explain(e: vnc::VncError, cfg: &SessionConfig) -> anyhow::Error {
    match e {
        vnc::VncError::VncAuthRefused => anyhow!(
            "{} (allow it with --allow-vnc-auth, or tc.allow_vnc_auth=1 on the kernel command line)",
            vnc::VncError::VncAuthRefused
        ),
        vnc::VncError::IoError(io) => {
            let origin = cfg.tls.as_ref().map_or("", |t| t.origin.as_str());
            match io.get_ref().and_then(|i| i.downcast_ref::<vnc::rustls::Error>()) {
                Some(tls) => anyhow!("the server is not trusted (CA of {origin}): {}", proto::tls::explain(tls)),
                None => anyhow::Error::new(io),
            }
        }
        e => anyhow::Error::new(e),
    }
}

async fn handshake<S>(
    stream: S,
    cfg: &SessionConfig,
    name: Option<vnc::rustls::pki_types::ServerName<'static>>,
    shared: &Arc<Shared>,
) -> anyhow::Result<VncClient>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let password = cfg.password.clone();
    let mut c = VncConnector::new(stream)
        .set_auth_method(async move { password.get().await?.ok_or(vnc::VncError::NoPassword) })
        .allow_vnc_auth(cfg.allow_vnc_auth)
        .allow_shared(true)
        .set_pixel_format(PixelFormat::bgra())
        .set_sink(Arc::clone(shared) as Arc<dyn vnc::PixelSink>);
    if let (Some(tls), Some(server_name)) = (&cfg.tls, name) {
        c = c.set_vencrypt(vnc::VencryptConfig { tls: tls.config.clone(), server_name });
    }
    for e in cfg.encodings() {
        c = c.add_encoding(e);
    }
    // The time limit runs from the password's arrival: a standby connection waits for it after
    // the TLS handshake, for as long as the server lets it.
    let limit = async {
        let _ = cfg.password.get().await;
        tokio::time::sleep(CONNECT_TIMEOUT).await;
    };
    let client = tokio::select! {
        r = async { c.build()?.try_start().await?.finish() } => r,
        _ = limit => bail!("RFB handshake did not finish within {CONNECT_TIMEOUT:?}"),
    }
    .map_err(|e| explain(e, cfg))
    .context("RFB handshake")?;
    Ok(client)
}

async fn drive(
    client: &VncClient,
    shared: &Arc<Shared>,
    input: &mut mpsc::UnboundedReceiver<InputEvent>,
) -> anyhow::Result<()> {
    shared.frames.send_replace(0);
    shared.shown.store(false, Ordering::Release);
    let mut frames = 0u64;
    let hint_off = tokio::time::sleep(NEVER);
    tokio::pin!(hint_off);
    let mut hint_shown = false;
    let mut update = Update::default();
    loop {
        tokio::select! {
            biased;
            ev = input.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                let msg = match ev {
                    InputEvent::Quit => { shared.request_quit(); return Ok(()); }
                    InputEvent::Logout => { shared.request_logout(); return Ok(()); }
                    InputEvent::Key { keysym, down } => X11Event::KeyEvent((keysym, down).into()),
                    InputEvent::Pointer { x, y, buttons } => X11Event::PointerEvent((x, y, buttons).into()),
                };
                client.input(msg).await.context("sending input")?;
            }
            _ = &mut hint_off => {
                shared.set_status_only(None);
                hint_off.as_mut().reset(tokio::time::Instant::now() + NEVER);
            }
            ev = client.recv_event() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(vnc::VncError::ClientNotRunning) => bail!("connection lost"),
                    Err(e) => return Err(e).context("reading from the server"),
                };
                if apply(ev, shared, &mut update)? {
                    update.painted = shared.painted.swap(false, Ordering::AcqRel);
                    update.resized |= shared.resized.swap(false, Ordering::AcqRel);
                    shared.touch();
                    // Servers announce the desktop layout in an update of its own (no pixels):
                    // only updates that painted count as frames, and after a size change the
                    // whole desktop is asked for again.
                    if update.painted {
                        frames += 1;
                        if frames == 1 {
                            shared.set_status(None);
                            info!("first full frame received");
                            if shared.hint.get().is_some() && !hint_shown {
                                hint_shown = true;
                                hint_off.as_mut().reset(tokio::time::Instant::now() + HINT_FOR);
                            }
                        }
                        shared.frames.send_replace(frames);
                    }
                    let req = if update.resized { X11Event::FullRefresh } else { X11Event::Refresh };
                    update = Update::default();
                    client.input(req).await.context("requesting an update")?;
                }
            }
        }
    }
}

/// What the current FramebufferUpdate did so far.
#[derive(Default)]
struct Update {
    painted: bool,
    resized: bool,
}

/// Handles what vnc-rs still sends as events (pixels and sizes went to the [`vnc::PixelSink`]);
/// true at the end of a complete update.
fn apply(ev: VncEvent, shared: &Shared, update: &mut Update) -> anyhow::Result<bool> {
    match ev {
        // Already applied by the sink; a legacy DesktopSize asks for a full repaint even when
        // the size stayed the same.
        VncEvent::SetResolution(s) => {
            info!("server size {}x{} (server init or DesktopSize)", s.width, s.height);
            update.resized = true;
        }
        VncEvent::DesktopUpdate(u) => match u.layout {
            Some(l) => info!("server size {}x{} (ExtendedDesktopSize)", l.width, l.height),
            None => debug!("desktop update without a layout"),
        },
        VncEvent::SetCursor(rect, data) => {
            let mut s = shared.lock();
            s.cursor = (rect.width > 0 && rect.height > 0).then(|| Cursor {
                hot_x: rect.x.into(),
                hot_y: rect.y.into(),
                w: rect.width.into(),
                h: rect.height.into(),
                bgra: data,
            });
            s.cursor_gen += 1;
        }
        VncEvent::UpdateEnd => return Ok(true),
        VncEvent::Error(e) => bail!("{e}"),
        VncEvent::Bell => debug!("bell"),
        VncEvent::Text(t) => debug!("server clipboard: {} bytes", t.len()),
        other => debug!("ignored {other:?}"),
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(Target::parse("h:5901").unwrap(), Target::Tcp(a) if a == "h:5901"));
        assert!(matches!(Target::parse("h").unwrap(), Target::Tcp(a) if a == "h:5900"));
        assert!(matches!(Target::parse("h::6000").unwrap(), Target::Tcp(a) if a == "h:6000"));
        assert!(matches!(Target::parse("unix:/x").unwrap(), Target::Unix(_)));
        assert!(Target::parse("h:notaport").is_err());
        assert!(Target::parse("").is_err());
    }
}
