//! One RFB connection after the other: connect, apply what the server sends to the shared
//! framebuffer, forward input, and on any failure show why and reconnect with backoff.
//!
//! vnc-rs decodes on its own tokio tasks; this task only copies decoded rectangles into the
//! framebuffer. The presenter runs on the main thread and never waits for the network.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use vnc::{PixelFormat, VncClient, VncConnector, VncEncoding, VncEvent, X11Event};

use super::framebuffer::{Cursor, Framebuffer, Rect, BPP};
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

#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub target: Target,
    pub password: Option<String>,
    pub encoding: Encoding,
    pub jpeg_quality: u8,
    pub compress_level: Option<u8>,
    /// Reconnect after failures; off: the first failure ends the viewer.
    pub reconnect: bool,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
}

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
    /// Complete framebuffer updates received in the current connection.
    frames: watch::Sender<u64>,
    /// Set by the session after every change, read by presenters to skip idle polls cheaply.
    dirty: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            screen: Mutex::new(Screen::default()),
            quit: AtomicBool::new(false),
            frames: watch::channel(0).0,
            dirty: AtomicU64::new(0),
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

    pub(crate) fn set_status(&self, text: Option<String>) {
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

    pub(crate) fn frames(&self) -> watch::Receiver<u64> {
        self.frames.subscribe()
    }

    pub(crate) fn request_quit(&self) {
        self.quit.store(true, Ordering::Release);
        self.touch();
    }

    pub(crate) fn quitting(&self) -> bool {
        self.quit.load(Ordering::Acquire)
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
        let why = match result {
            Ok(()) => "the server closed the connection".to_string(),
            Err(e) => format!("{e:#}"),
        };
        warn!("{}: {why}", cfg.target);
        if !cfg.reconnect {
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
                Some(ev) = input.recv() => if ev == InputEvent::Quit { shared.request_quit(); }
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
            handshake(s, cfg).await?
        }
        Target::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await.context("connecting")?;
            handshake(s, cfg).await?
        }
    };
    let result = drive(&client, shared, input).await;
    let _ = client.close().await;
    result
}

async fn handshake<S>(stream: S, cfg: &SessionConfig) -> anyhow::Result<VncClient>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let password = cfg.password.clone();
    let mut c = VncConnector::new(stream)
        .set_auth_method(async move { password.ok_or(vnc::VncError::NoPassword) })
        .allow_shared(true)
        .set_pixel_format(PixelFormat::bgra());
    for e in cfg.encodings() {
        c = c.add_encoding(e);
    }
    let client = tokio::time::timeout(CONNECT_TIMEOUT, async {
        c.build()?.try_start().await?.finish()
    })
    .await
    .map_err(|_| anyhow!("RFB handshake did not finish within {CONNECT_TIMEOUT:?}"))?
    .context("RFB handshake")?;
    Ok(client)
}

async fn drive(
    client: &VncClient,
    shared: &Arc<Shared>,
    input: &mut mpsc::UnboundedReceiver<InputEvent>,
) -> anyhow::Result<()> {
    shared.frames.send_replace(0);
    let mut frames = 0u64;
    let mut update = Update::default();
    loop {
        tokio::select! {
            biased;
            ev = input.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                let msg = match ev {
                    InputEvent::Quit => { shared.request_quit(); return Ok(()); }
                    InputEvent::Key { keysym, down } => X11Event::KeyEvent((keysym, down).into()),
                    InputEvent::Pointer { x, y, buttons } => X11Event::PointerEvent((x, y, buttons).into()),
                };
                client.input(msg).await.context("sending input")?;
            }
            ev = client.recv_event() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(vnc::VncError::ClientNotRunning) => bail!("connection lost"),
                    Err(e) => return Err(e).context("reading from the server"),
                };
                if apply(ev, shared, &mut update)? {
                    // Servers announce the desktop layout in an update of its own (no pixels):
                    // only updates that painted count as frames, and after a size change the
                    // whole desktop is asked for again.
                    if update.painted {
                        frames += 1;
                        if frames == 1 {
                            shared.set_status(None);
                            info!("first full frame received");
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

/// Applies one event to the screen; true at the end of a complete update.
fn apply(ev: VncEvent, shared: &Shared, update: &mut Update) -> anyhow::Result<bool> {
    if matches!(ev, VncEvent::RawImage(..) | VncEvent::Copy(..) | VncEvent::JpegImage(..)) {
        update.painted = true;
    }
    let r = |r: vnc::Rect| Rect::new(r.x.into(), r.y.into(), r.width.into(), r.height.into());
    match ev {
        VncEvent::SetResolution(s) => {
            resize(shared, s.width.into(), s.height.into());
            update.resized = true;
        }
        VncEvent::DesktopUpdate(u) => {
            if let Some(l) = u.layout {
                let s = shared.lock();
                let same = s.fb.width() == u32::from(l.width) && s.fb.height() == u32::from(l.height);
                drop(s);
                if !same {
                    resize(shared, l.width.into(), l.height.into());
                    update.resized = true;
                }
            }
        }
        VncEvent::RawImage(rect, data) => shared.lock().fb.put_bgrx(r(rect), &data)?,
        VncEvent::Copy(dst, src) => shared.lock().fb.copy_rect(r(dst), src.x.into(), src.y.into())?,
        VncEvent::JpegImage(rect, data) => {
            // Decoded before taking the lock so that the presenter is never held up by it.
            let bgrx = decode_jpeg(r(rect), &data)?;
            shared.lock().fb.put_bgrx(r(rect), &bgrx)?;
        }
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
        VncEvent::UpdateEnd => {
            shared.touch();
            return Ok(true);
        }
        VncEvent::Error(e) => bail!("{e}"),
        VncEvent::Bell => debug!("bell"),
        VncEvent::Text(t) => debug!("server clipboard: {} bytes", t.len()),
        other => debug!("ignored {other:?}"),
    }
    Ok(false)
}

fn resize(shared: &Shared, w: u32, h: u32) {
    info!("desktop is {w}x{h}");
    let mut s = shared.lock();
    s.fb.resize(w, h);
    s.size_gen += 1;
}

fn decode_jpeg(r: Rect, jpeg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .context("decoding a Tight JPEG rectangle")?
        .into_rgb8();
    if img.width() != r.w || img.height() != r.h {
        bail!("JPEG of {}x{} for a {}x{} rectangle", img.width(), img.height(), r.w, r.h);
    }
    let mut out = vec![0u8; r.w as usize * r.h as usize * BPP];
    for (d, s) in out.chunks_exact_mut(BPP).zip(img.as_raw().chunks_exact(3)) {
        d[0] = s[2];
        d[1] = s[1];
        d[2] = s[0];
    }
    Ok(out)
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

    #[test]
    fn jpeg_rectangles_decode_or_fail_cleanly() {
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([200, 100, 50]));
        let mut jpeg = vec![];
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let out = decode_jpeg(Rect::new(0, 0, 3, 2), &jpeg).unwrap();
        assert!((i32::from(out[2]) - 200).abs() < 8 && (i32::from(out[0]) - 50).abs() < 8);
        assert!(decode_jpeg(Rect::new(0, 0, 4, 2), &jpeg).is_err());
        assert!(decode_jpeg(Rect::new(0, 0, 3, 2), &jpeg[..20]).is_err());
    }
}
