//! `thinclient view`: the console VNC viewer.
//!
//! The session (tokio, vnc-rs) keeps a copy of the remote desktop in [`session::Shared`]; a
//! presenter on the main thread shows the changed parts and feeds input back. The password
//! comes from a file or an inherited file descriptor (the agent writes the broker's session
//! password into a pipe), never from the command line.

mod framebuffer;
pub(crate) mod input;
mod jpeg;
mod layout;
mod overlay;
mod presenter;
mod screenshot;
mod session;
pub(crate) use session::Encoding;

use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use log::{info, warn};

/// Show a VNC desktop full screen on this PC's console.
#[derive(clap::Args, Debug)]
pub(crate) struct ViewArgs {
    /// The VNC server: HOST:PORT, HOST (port 5900), HOST::PORT or unix:PATH.
    pub server: String,
    /// File holding the VNC password (first line).
    #[arg(long, conflicts_with = "password_fd")]
    pub password_file: Option<PathBuf>,
    /// Inherited file descriptor to read the VNC password from (read to its end, then closed).
    /// This is how the agent hands over the broker's session password.
    #[arg(long, env = "TC_VNC_PASSWORD_FD")]
    pub password_fd: Option<i32>,
    /// Inherited file descriptor (a pipe's write end) that gets one byte whenever a
    /// connection's first frame is on the screen. This is how the agent learns that the
    /// desktop is shown.
    #[arg(long)]
    pub shown_fd: Option<i32>,
    /// The certificate authority a VeNCrypt server's certificate must come from (the boot
    /// image's by default). A viewer the agent starts gets the CA's PEM text in
    /// `TC_VNC_CA_PEM` instead, which also reaches a viewer chrooted into the NFS root.
    #[arg(long, default_value = proto::tls::IMAGE_CA_PATH)]
    pub ca_cert: PathBuf,
    /// Also answer servers that offer only VNC authentication (old proxies, VNC servers with a
    /// password): its exchange gives the password away to anyone who records it. Kernel
    /// command line: `tc.allow_vnc_auth=1`.
    #[arg(long, env = "TC_ALLOW_VNC_AUTH", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub allow_vnc_auth: bool,
    /// Where to draw: `auto` tries SDL2 (window system or KMS/DRM) then /dev/fb0.
    #[arg(long, value_enum, default_value_t = presenter::Choice::Auto)]
    pub presenter: presenter::Choice,
    /// Framebuffer device for the fbdev presenter.
    #[arg(long, default_value = "/dev/fb0")]
    pub fbdev: PathBuf,
    /// Preferred encoding; CopyRect, Raw, cursor and desktop-size updates are always offered.
    /// The agent sets it from `tc.encoding` on the kernel command line (lossless `tight` unless
    /// told otherwise).
    #[arg(long, value_enum, env = "TC_ENCODING", default_value_t = session::Encoding::TightJpeg)]
    pub encoding: session::Encoding,
    /// JPEG quality 0-9 for `--encoding tight-jpeg`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub jpeg_quality: u8,
    /// zlib compression level 0-9 to ask the server for (server default if unset).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub compress_level: Option<u8>,
    /// Keyboard layout of this PC's keyboard; keys are sent as X keysyms.
    #[arg(long, value_enum, env = "TC_LAYOUT", default_value_t = input::Layout::Us)]
    pub layout: input::Layout,
    /// Show the desktop 1:1 instead of scaling it to the screen (aspect ratio is always kept).
    #[arg(long)]
    pub no_scale: bool,
    /// SDL: how to draw. `gpu` is SDL's own pick (OpenGL or GLES where there is one); `software`
    /// scales on the CPU and hands finished frames to the display (X11 shared memory), which is
    /// cheaper where the only GL is a software rasterizer (llvmpipe) and needs no GL stack in
    /// memory; `auto` is `software` on X11 and `gpu` elsewhere.
    #[arg(long, value_enum, default_value_t = presenter::Renderer::Auto)]
    pub renderer: presenter::Renderer,
    /// SDL: a window of WIDTHxHEIGHT instead of full screen (for development).
    #[arg(long, value_parser = parse_size)]
    pub window: Option<(u32, u32)>,
    /// Keys that log the person out, e.g. `Ctrl+Alt+End` (Ctrl, Alt, Shift and one of End, Home,
    /// Insert, Delete, PageUp, PageDown, Pause, Backspace, Escape, F1-F12). They are shown on
    /// the status line, and pressing them makes the viewer exit with status 10. The agent sets
    /// this after a login.
    #[arg(long)]
    pub logout_keys: Option<input::Chord>,
    /// Connect now and get as far as the password (through VeNCrypt's TLS handshake), then
    /// wait for it on `--password-fd`: its first line is the password, a second line, if any,
    /// the logout keys. The screen and the keyboards are taken only once it has arrived, and
    /// the connection is kept ready (reconnecting as the server allows) until then. The agent
    /// starts its viewer like this while the login form is up, so that a login only has the
    /// password and the first frame left to wait for.
    #[arg(long, requires = "password_fd")]
    pub standby: bool,
    /// Exit when the connection ends instead of reconnecting with backoff.
    #[arg(long)]
    pub once: bool,
    /// Longest wait between reconnection attempts, in seconds (the wait doubles from 0.5 s).
    #[arg(long, default_value_t = 15.0)]
    pub reconnect_max_delay: f64,
    /// Write what the viewer shows to this PNG after the first complete frame, and again on
    /// every SIGUSR1.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Seconds to wait after the first complete frame before the screenshot.
    #[arg(long, default_value_t = 0.0)]
    pub screenshot_delay: f64,
    /// Exit once the screenshot is written.
    #[arg(long, requires = "screenshot")]
    pub exit_after_screenshot: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT")?;
    let p = |v: &str| v.parse::<u32>().ok().filter(|n| (1..=16384).contains(n)).ok_or(format!("bad size {s:?}"));
    Ok((p(w)?, p(h)?))
}

fn read_password(args: &ViewArgs) -> anyhow::Result<Option<String>> {
    let raw = if let Some(p) = &args.password_file {
        std::fs::read_to_string(p).with_context(|| format!("reading password file {}", p.display()))?
    } else if let Some(fd) = args.password_fd {
        read_fd(fd)?
    } else {
        return Ok(None);
    };
    first_line(&raw).map(Some)
}

/// Reads the inherited `fd` to its end and closes it.
fn read_fd(fd: i32) -> anyhow::Result<String> {
    if fd < 3 {
        bail!("--password-fd {fd}: standard streams cannot carry the password");
    }
    // SAFETY: the fd was handed to us for this purpose; the File closes it after reading.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut s = String::new();
    f.read_to_string(&mut s).with_context(|| format!("reading password from fd {fd}"))?;
    Ok(s)
}

fn first_line(raw: &str) -> anyhow::Result<String> {
    let pw = raw.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        bail!("the password source is empty");
    }
    Ok(pw)
}

/// What a standby viewer is handed: the password, and the logout keys when a person logged in.
fn standby_handover(raw: &str) -> anyhow::Result<(String, Option<input::Chord>)> {
    let pw = first_line(raw)?;
    let keys = match raw.lines().nth(1).map(str::trim).filter(|l| !l.is_empty()) {
        Some(k) => Some(k.parse::<input::Chord>().map_err(|e| anyhow::anyhow!("logout keys {k:?}: {e}"))?),
        None => None,
    };
    Ok((pw, keys))
}

fn shown_signal(fd: i32) -> anyhow::Result<std::fs::File> {
    if fd < 3 {
        bail!("--shown-fd {fd}: standard streams cannot carry the signal");
    }
    // Refuses a number that is not an open descriptor before taking ownership of it.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).with_context(|| format!("--shown-fd {fd} is not open"))?;
    // SAFETY: the descriptor is open and was handed to us for this purpose alone.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// glibc raises its mmap threshold each time a large block is freed, after which the
/// desktop-sized buffers (several MiB per rectangle) come from the heap and their pages stay
/// resident after use; extra per-thread arenas keep more such heaps. A fixed threshold returns
/// big buffers to the system as soon as they are freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The environment variable that carries the CA's PEM text from the agent.
pub(crate) const CA_PEM_ENV: &str = "TC_VNC_CA_PEM";

/// The TLS config VeNCrypt servers are checked with: the CA of `TC_VNC_CA_PEM` or of
/// `--ca-cert`; none when neither exists (a server that requires VeNCrypt is then refused).
fn vencrypt_tls(args: &ViewArgs) -> anyhow::Result<Option<session::Tls>> {
    if let Ok(pem) = std::env::var(CA_PEM_ENV) {
        let config = proto::tls::client_config_from_pem(pem.as_bytes(), CA_PEM_ENV)?;
        return Ok(Some(session::Tls { config, origin: CA_PEM_ENV.into() }));
    }
    if !args.ca_cert.exists() {
        info!("no CA certificate at {}: VeNCrypt servers cannot be checked", args.ca_cert.display());
        return Ok(None);
    }
    let config = proto::tls::client_config(&args.ca_cert)?;
    Ok(Some(session::Tls { config, origin: args.ca_cert.display().to_string() }))
}

pub(crate) fn run(mut args: ViewArgs) -> anyhow::Result<()> {
    tune_allocator();
    let target = session::Target::parse(&args.server)?;
    let (handover, password) = if args.standby {
        let (tx, password) = session::Password::later();
        (Some(tx), password)
    } else {
        (None, session::Password::known(read_password(&args)?))
    };
    let cfg = session::SessionConfig {
        target,
        password,
        tls: vencrypt_tls(&args)?,
        allow_vnc_auth: args.allow_vnc_auth,
        encoding: args.encoding,
        jpeg_quality: args.jpeg_quality,
        compress_level: args.compress_level,
        reconnect: !args.once,
        backoff_max: Duration::from_secs_f64(args.reconnect_max_delay.clamp(0.5, 3600.0)),
        logout_hint: args.logout_keys.map(|c| format!("Log out: {c}")),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vnc")
        .build()
        .context("starting the tokio runtime")?;
    let shared = session::Shared::new();
    if let Some(fd) = args.shown_fd {
        shared.set_shown_signal(shown_signal(fd)?);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let session = rt.spawn(session::run(cfg, Arc::clone(&shared), rx));
    if let Some(path) = args.screenshot.clone() {
        let plan = screenshot::Plan {
            path,
            delay: Duration::from_secs_f64(args.screenshot_delay.max(0.0)),
            exit_after: args.exit_after_screenshot,
        };
        rt.spawn(screenshot::run(plan, Arc::clone(&shared)));
    }
    {
        let sh = Arc::clone(&shared);
        rt.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            info!("signal: quitting");
            sh.request_quit();
        });
    }
    // The screen is opened while the session connects (in standby: authenticates).
    if let Some(handover) = handover {
        let fd = args.password_fd.expect("clap: --standby requires --password-fd");
        info!("standby: connecting to {}, waiting for the password", args.server);
        let (done, arrived) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(read_fd(fd).and_then(|raw| standby_handover(&raw)));
        });
        let got = loop {
            match arrived.recv_timeout(Duration::from_millis(100)) {
                Ok(got) => break Some(got),
                Err(_) if shared.quitting() => break None,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        let Some(got) = got else {
            rt.shutdown_timeout(Duration::from_secs(1));
            return Ok(());
        };
        // Whoever started us gave up on this connection: nothing to show.
        let (pw, keys) = got.context("standby: the password")?;
        if let Some(k) = keys {
            shared.set_logout_hint(format!("Log out: {k}"));
            args.logout_keys = Some(k);
        }
        handover.send_replace(Some(Some(pw)));
        info!("standby: password received");
    }
    let opts = presenter::Options {
        layout: args.layout,
        scale: !args.no_scale,
        window: args.window,
        renderer: args.renderer,
        fbdev: args.fbdev.clone(),
        logout: args.logout_keys,
    };
    let mut presenter = match presenter::open(args.presenter, &opts) {
        Ok(p) => p,
        Err(e) => {
            shared.request_quit();
            rt.shutdown_timeout(Duration::from_secs(1));
            return Err(e);
        }
    };
    let shown = presenter.run(&shared, &tx);
    shared.request_quit();
    drop(tx);
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), session).await });
    rt.shutdown_timeout(Duration::from_secs(1));
    shown?;
    if shared.logging_out() {
        info!("logout keys pressed: exiting with status {}", input::LOGOUT_EXIT_CODE);
        std::process::exit(input::LOGOUT_EXIT_CODE);
    }
    match ended {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e).context("session task"),
        Err(_) => {
            warn!("session did not stop in time");
            Ok(())
        }
    }
}
