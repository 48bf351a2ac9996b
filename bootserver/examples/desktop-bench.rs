//! Benchmark driver for scripts/bench/time-to-desktop and scripts/bench/handoff: a real
//! `server-host` with the desktop template on loopback, the broker's orchestrator and VNC proxy,
//! and a minimal RFB viewer that times every FramebufferUpdateRequest until its answer.
//!
//! A "frame" is an answered FramebufferUpdateRequest. The template's screen is static and QEMU
//! answers an incremental request only once something changed (and slows its refresh timer
//! down to seconds on an idle screen), so for the handoff the bench makes every guest move one
//! pixel every 50 ms (a loop sent to its serial shell once it printed TC-READY). The viewer
//! asks for incremental updates of the whole screen back to back, one request at a time; the
//! longest wait for an answer is the blackout. After a reconnect the first request asks for
//! the whole frame.
//!
//! Memory is scaled down for TCG: one host of 512 MiB, levels 256/128 MiB.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bootserver::broker::hosts::{HostClient, HostRegistry};
use bootserver::broker::orchestrator::{backend_of, Orchestrator, Outcome};
use bootserver::broker::proxy::backend::{self, Backend, Stream, VncAddr};
use bootserver::net::limits::{ConnLimiter, Limits};
use bootserver::broker::proxy::rfb::{self, PixelFormat, ServerFramer, ServerItem};
use bootserver::broker::proxy::{Proxy, ProxyOptions};
use bootserver::broker::settings::{BrokerConfig, HostConfig};
use clap::{Parser, Subcommand};
use proto::host::{CreateVm, VncAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The desktop template's screen size (scripts/build-desktop-template).
const DESKTOP: (u16, u16) = (1280, 800);

#[derive(Parser)]
#[command(about = "Times desktop arrivals and handoffs on a real server-host (see scripts/bench/time-to-desktop and handoff)")]
struct Cli {
    /// The server-host binary to run.
    #[arg(long)]
    server_host: PathBuf,
    /// Folder of templates (with `desktop` built by scripts/build-desktop-template).
    #[arg(long)]
    templates: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Announce to first frame and to the desktop on the proxy, with pool 0 and pool 1.
    FirstFrame,
    /// Longest wait for a frame during a hard handoff: through the proxy, the seed's way
    /// (reconnect to the new VM), and with balloon = true.
    Handoff,
    /// A viewer straight to a running VM's own VNC server (scripts/bench/login's peer): from
    /// the TCP connect through the handshake (VeNCrypt with the broker's client certificate
    /// for `tls:` addresses) to the first whole frame, once per round; prints each in ms.
    VmFrame {
        /// The VM's VNC address as the session store has it (`tls:IP:PORT`, `unix:PATH`).
        #[arg(long)]
        vnc: String,
        /// File holding the VM's VNC password (first line).
        #[arg(long)]
        password_file: PathBuf,
        /// The boot server's state folder, whose client certificate the VM's host trusts.
        #[arg(long)]
        bootserver_state: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

/// `server-host serve` in a temporary folder; dropping it kills it and its QEMUs (the
/// `ServerHost` drops before the folder).
struct Host {
    sh: testkit::ServerHost,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start(bin: &Path, templates: &Path) -> anyhow::Result<Host> {
        let dir = tempfile::tempdir()?;
        let sh = testkit::ServerHost::start(bin, dir.path(), templates)
            .with_context(|| format!("running {}", bin.display()))?;
        Ok(Host { sh, _dir: dir })
    }

    fn url(&self) -> String {
        self.sh.url()
    }

    /// The broker's side of mutual TLS with this host.
    fn tls(&self) -> anyhow::Result<std::sync::Arc<proto::tls::rustls::ClientConfig>> {
        bootserver::broker::flow::host_tls(&self.sh.pki.state)
    }
}

// --- a minimal RFB viewer ----------------------------------------------------------------------

/// The proxy's own RFB client (handshake, VNC authentication) and framing; Raw and DesktopSize
/// only, so that an answer's length is known without decoding.
struct Viewer {
    s: Stream,
    w: u16,
    h: u16,
    format: PixelFormat,
    framer: ServerFramer,
    buf: Vec<u8>,
    /// Ask for changes only (after the first whole frame).
    incremental: bool,
}

impl Viewer {
    async fn connect(vnc: &VncAddress, password: &str) -> anyhow::Result<Viewer> {
        Viewer::open(backend_of(vnc, password)?).await
    }

    async fn open(b: Backend) -> anyhow::Result<Viewer> {
        let (mut s, init) = backend::connect(&b).await?;
        s.write_all(&rfb::set_encodings(&[rfb::enc::RAW, rfb::enc::DESKTOP_SIZE])).await?;
        Ok(Viewer {
            s,
            w: init.width,
            h: init.height,
            format: init.format,
            framer: ServerFramer::default(),
            buf: Vec::new(),
            incremental: false,
        })
    }

    /// Asks for the whole screen and waits for the answer.
    async fn frame(&mut self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.s.write_all(&rfb::update_request(self.incremental, self.w, self.h)).await?;
        let mut in_update = false;
        loop {
            let mut at = 0;
            while let Some((item, len)) = self.framer.next(&self.buf[at..], &self.format)? {
                at += len;
                match item {
                    ServerItem::UpdateHeader { .. } => in_update = true,
                    ServerItem::Rect { width, height, encoding: rfb::enc::DESKTOP_SIZE, .. } => (self.w, self.h) = (width, height),
                    ServerItem::Rect { encoding: rfb::enc::RAW, .. } | ServerItem::Other { .. } => {}
                    ServerItem::Rect { encoding, .. } => bail!("rectangle with encoding {encoding}, which was not asked for"),
                }
                if in_update && self.framer.at_boundary() {
                    self.buf.drain(..at);
                    return Ok(t0.elapsed());
                }
            }
            self.buf.drain(..at);
            if self.s.read_buf(&mut self.buf).await? == 0 {
                bail!("the VNC server closed the connection");
            }
        }
    }
}

/// Frames asked back to back; `max` is the longest wait since the last `reset`.
#[derive(Default)]
struct Gaps {
    max: Duration,
    frames: u64,
    /// When the last answer came.
    last: Option<Instant>,
    error: Option<String>,
}

fn watch(mut v: Viewer) -> (Arc<Mutex<Gaps>>, tokio::task::JoinHandle<()>) {
    v.incremental = true;
    let g = Arc::new(Mutex::new(Gaps::default()));
    let gg = g.clone();
    let task = tokio::spawn(async move {
        loop {
            match v.frame().await {
                Ok(d) => {
                    log::debug!("desktop-bench: answered in {} ms", d.as_millis());
                    let mut g = gg.lock().unwrap();
                    g.max = g.max.max(d);
                    g.frames += 1;
                    g.last = Some(Instant::now());
                }
                Err(e) => {
                    gg.lock().unwrap().error = Some(format!("{e:#}"));
                    return;
                }
            }
        }
    });
    (g, task)
}

fn reset(g: &Mutex<Gaps>) -> Duration {
    let mut g = g.lock().unwrap();
    std::mem::take(&mut g.max)
}

/// The guest loop that changes one pixel every 50 ms (busybox shell on the template's serial port).
const ANIMATE: &str = "( i=0; while :; do i=$(( (i + 1) % 128 )); p='\\377\\377\\377\\000'; \
[ $i -lt 64 ] || p='\\000\\000\\200\\000'; printf \"$p\" | \
dd of=/dev/fb0 bs=4 seek=$(( 1280 * 700 + i % 64 )) conv=notrunc 2>/dev/null; usleep 50000; done ) &\n";

/// Sends [`ANIMATE`] to every VM of `vms` (server-host's VM folders) once its guest printed
/// TC-READY; the console connections stay open (QEMU drops unread input on a close) until the
/// task is aborted.
fn animate(vms: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut done: Vec<(PathBuf, tokio::net::UnixStream)> = Vec::new();
        loop {
            for e in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
                let dir = e.path();
                if done.iter().any(|(d, _)| *d == dir) {
                    continue;
                }
                let log = std::fs::read(dir.join("console.log")).unwrap_or_default();
                if !log.windows(8).any(|w| w == b"TC-READY") {
                    continue;
                }
                if let Ok(mut s) = tokio::net::UnixStream::connect(dir.join("console.sock")).await {
                    if s.write_all(ANIMATE.as_bytes()).await.is_ok() {
                        log::debug!("desktop-bench: animating {}", dir.display());
                        done.push((dir, s));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

// --- the broker ----------------------------------------------------------------------------

struct Broker {
    orch: Arc<Orchestrator>,
    proxy_addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn broker(host: &Host, pool: usize, balloon: bool) -> anyhow::Result<Broker> {
    let cfg = BrokerConfig {
        levels_mib: vec![256, 128],
        switch_timeout_secs: 600,
        stop_deadline_secs: 20,
        balloon,
        pool,
        hosts: vec![HostConfig { name: "h1".into(), url: host.url(), memory_mib: 512 }],
        ..Default::default()
    }
    .validate()
    .map_err(anyhow::Error::msg)?;
    let hosts = HostRegistry::new(&cfg.hosts, host.tls()?, cfg.health_interval(), cfg.health_failures)?;
    let t0 = Instant::now();
    while hosts.status()[0].last_ok_ms_ago.is_none() || hosts.status()[0].accel.is_none() {
        hosts.check_all().await;
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("server-host did not answer: {:?}", hosts.status());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let proxy = Proxy::new(ProxyOptions { switch_timeout: Duration::from_secs(600), legacy_vnc_auth: true, ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    let limiter = ConnLimiter::unbounded("proxy", Limits::default().proxy);
    let server = tokio::spawn(proxy.clone().serve(listener, limiter));
    let (orch, _notices) = Orchestrator::new(cfg, hosts, proxy, proxy_addr)?;
    Ok(Broker { orch, proxy_addr, server })
}

async fn arrive(b: &Broker, user: &str) -> anyhow::Result<String> {
    match b.orch.arrive(user).await? {
        Outcome::Assigned { token, .. } => Ok(token),
        Outcome::Refused { message } | Outcome::NoTemplate { message } => bail!("{user} refused: {message}"),
    }
}

async fn proxy_viewer(b: &Broker, token: &str) -> anyhow::Result<Viewer> {
    Viewer::open(Backend { addr: VncAddr::Tcp(b.proxy_addr.to_string()), password: Some(token.to_string()) }).await
}

/// Frames until the screen has the desktop's size; the time it took.
async fn until_desktop(v: &mut Viewer, limit: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while (v.w, v.h) != DESKTOP {
        v.frame().await?;
        if t0.elapsed() > limit {
            bail!("no {}x{} screen within {limit:?} (shows {}x{})", DESKTOP.0, DESKTOP.1, v.w, v.h);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(t0.elapsed())
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

// --- first frame ---------------------------------------------------------------------------

/// Announce to first frame and to the desktop, for one arrival on an empty host.
async fn first_frame(cli: &Cli, pool: usize) -> anyhow::Result<(Duration, Duration)> {
    let host = Host::start(&cli.server_host, &cli.templates)?;
    let b = broker(&host, pool, false).await?;
    if pool > 0 {
        let t0 = Instant::now();
        loop {
            let p = b.orch.pool();
            if let Some(v) = p.iter().find(|v| v.ready) {
                eprintln!("desktop-bench: pool VM {} ready after {} ms", v.vm, v.boot_ms.unwrap_or(0));
                break;
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("no pool VM ready within 600 s: {p:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A pool sits for a while before someone comes: the guest is fully up by then.
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let t0 = Instant::now();
    let token = arrive(&b, "52:54:00:00:00:01").await?;
    let mut v = proxy_viewer(&b, &token).await?;
    v.frame().await?;
    let first = t0.elapsed();
    until_desktop(&mut v, Duration::from_secs(600)).await?;
    let desktop = t0.elapsed();
    eprintln!("desktop-bench: pool {pool}: {}", serde_json::to_string(&b.orch.decisions().last().map(|d| &d.steps))?);
    Ok((first, desktop))
}

// --- handoff -------------------------------------------------------------------------------

/// Through the proxy: user 1 at 256 MiB watched through the proxy; users 2 and 3 arrive, and
/// user 1 is handed off (or ballooned) to 128 MiB. The longest wait during user 3's arrival.
async fn handoff_proxy(cli: &Cli, balloon: bool) -> anyhow::Result<(Duration, Duration)> {
    let host = Host::start(&cli.server_host, &cli.templates)?;
    let b = broker(&host, 0, balloon).await?;
    let anim = animate(host.sh.state.join("vms"));
    let token = arrive(&b, "52:54:00:00:00:01").await?;
    let mut v = proxy_viewer(&b, &token).await?;
    until_desktop(&mut v, Duration::from_secs(600)).await?;
    arrive(&b, "52:54:00:00:00:02").await?;
    let (gaps, task) = watch(v);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady = reset(&gaps);
    arrive(&b, "52:54:00:00:00:03").await?;
    // Frames keep coming after the switch: the gap is over once a few more have arrived.
    let n = gaps.lock().unwrap().frames;
    let t0 = Instant::now();
    while gaps.lock().unwrap().frames < n + 5 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    anim.abort();
    let g = gaps.lock().unwrap();
    if let Some(e) = &g.error {
        bail!("the viewer's connection ended during the handoff: {e}");
    }
    let rec = b.orch.decisions().pop().context("no decision")?;
    eprintln!("desktop-bench: {}", serde_json::to_string(&rec.steps)?);
    if !rec.steps.iter().any(|s| s.action.starts_with("hand off") && s.ok) {
        bail!("user 3's arrival made no handoff: {rec:?}");
    }
    Ok((g.max, steady))
}

/// The seed's way: the viewer is connected to the old VM itself; the new VM is started, and
/// once it shows the desktop the viewer disconnects and connects to it.
async fn handoff_seed(cli: &Cli) -> anyhow::Result<(Duration, Duration)> {
    let host = Host::start(&cli.server_host, &cli.templates)?;
    let c = HostClient::new("h1", &host.url(), host.tls()?).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    while c.facts(Duration::from_secs(5)).await.map(|f| f.accel.is_none()).unwrap_or(true) {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("server-host did not answer");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let create = |name: &str, mib| CreateVm {
        name: name.into(),
        template: "desktop".into(),
        memory_mib: mib,
        vcpus: 1,
        user: "u1".into(),
        persistent: true,
        vnc_password: None,
        pool: false,
    };
    let anim = animate(host.sh.state.join("vms"));
    let old = c.create(&create("old", 256)).await?;
    let mut v = connect_retrying(&old.vm.vnc, &old.vnc_password).await?;
    until_desktop(&mut v, Duration::from_secs(600)).await?;
    let (gaps, task) = watch(v);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady = reset(&gaps);
    let new = c.create(&create("new", 128)).await?;
    let mut probe = connect_retrying(&new.vm.vnc, &new.vnc_password).await?;
    until_desktop(&mut probe, Duration::from_secs(600)).await?;
    drop(probe);
    // The viewer drops the old VM; its blackout runs from the old VM's last answer to the new
    // VM's first full frame.
    task.abort();
    let _ = task.await;
    let (before, last) = {
        let g = gaps.lock().unwrap();
        (g.max, g.last.context("no frame from the old VM")?)
    };
    let mut v = Viewer::connect(&new.vm.vnc, &new.vnc_password).await?;
    v.frame().await?;
    let gap = last.elapsed();
    // The viewer goes on asking while the old VM stops, as it does behind the proxy (the
    // broker stops the old VM after the switch): the new guest's first changes count too.
    let (gaps, task) = watch(v);
    c.stop("old", 20).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    task.abort();
    anim.abort();
    let after = reset(&gaps);
    Ok((gap.max(before).max(after), steady))
}

async fn vm_frame(vnc: &str, password_file: &Path, state: &Path, rounds: u32) -> anyhow::Result<()> {
    backend::set_vm_tls(bootserver::broker::flow::host_tls(state)?);
    let password = std::fs::read_to_string(password_file).with_context(|| format!("reading {}", password_file.display()))?;
    let addr: VncAddr = vnc.parse().map_err(|e: String| anyhow::anyhow!("{vnc}: {e}"))?;
    let b = Backend { addr, password: Some(password.lines().next().unwrap_or("").to_string()) };
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut v = Viewer::open(b.clone()).await.with_context(|| format!("connecting to {vnc}"))?;
        v.frame().await?;
        println!("{:.1}", t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

async fn connect_retrying(vnc: &VncAddress, password: &str) -> anyhow::Result<Viewer> {
    let t0 = Instant::now();
    loop {
        match Viewer::connect(vnc, password).await {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() > Duration::from_secs(120) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp_millis().init();
    let mut cli = Cli::parse();
    if let What::VmFrame { vnc, password_file, bootserver_state, rounds } = &cli.what {
        return vm_frame(vnc, password_file, bootserver_state, *rounds).await;
    }
    // server-host resolves template paths from its own state folder.
    cli.templates = cli.templates.canonicalize().with_context(|| format!("templates folder {}", cli.templates.display()))?;
    match cli.what {
        What::FirstFrame => {
            let (f0, d0) = first_frame(&cli, 0).await.context("pool 0")?;
            let (f1, d1) = first_frame(&cli, 1).await.context("pool 1")?;
            println!("announce to first frame on the proxy: pool 0 {}, pool 1 {}, ratio {:.1}x", secs(f0), secs(f1), f0.as_secs_f64() / f1.as_secs_f64());
            println!("announce to desktop on the proxy:     pool 0 {}, pool 1 {}, ratio {:.1}x", secs(d0), secs(d1), d0.as_secs_f64() / d1.as_secs_f64());
        }
        What::VmFrame { .. } => unreachable!("handled above"),
        What::Handoff => {
            let (proxy, p_steady) = handoff_proxy(&cli, false).await.context("handoff through the proxy")?;
            let (seed, s_steady) = handoff_seed(&cli).await.context("the seed's reconnect")?;
            let (balloon, b_steady) = handoff_proxy(&cli, true).await.context("balloon")?;
            println!("longest wait for a frame (steady state before it in brackets):");
            println!("  hard handoff through the proxy:  {} ({})", secs(proxy), secs(p_steady));
            println!("  seed: viewer reconnects itself:  {} ({})", secs(seed), secs(s_steady));
            println!("  balloon, resized in place:       {} ({})", secs(balloon), secs(b_steady));
            let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
            println!("ratios: seed/proxy {:.1}x, proxy/balloon {:.1}x, seed/balloon {:.1}x", r(seed, proxy), r(proxy, balloon), r(seed, balloon));
        }
    }
    Ok(())
}
