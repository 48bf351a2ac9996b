//! Shared by the broker tests: a `server-host` on loopback with the desktop template, a vnc-rs
//! viewer that draws into memory, and PPM screens.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Clone, PartialEq, Eq)]
pub struct Screen {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lit = self.rgb.chunks(3).filter(|p| p.iter().any(|&c| c > 0)).count();
        write!(f, "{}x{} screen, {lit} non-black pixels", self.width, self.height)
    }
}

pub fn parse_ppm(data: &[u8]) -> anyhow::Result<Screen> {
    // "P6\n<w> <h>\n255\n" then RGB triples.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while data.get(at).is_some_and(|c| c.is_ascii_whitespace()) {
            at += 1;
        }
        let start = at;
        while data.get(at).is_some_and(|c| !c.is_ascii_whitespace()) {
            at += 1;
        }
        fields.push(std::str::from_utf8(&data[start..at])?.to_string());
    }
    at += 1;
    if fields[0] != "P6" || fields[3] != "255" {
        bail!("not an 8-bit P6 PPM");
    }
    let (width, height): (usize, usize) = (fields[1].parse()?, fields[2].parse()?);
    let rgb = data.get(at..at + width * height * 3).context("short PPM")?.to_vec();
    Ok(Screen { width, height, rgb })
}

/// What the viewer engine has drawn so far.
#[derive(Default)]
pub struct ViewerState {
    width: usize,
    height: usize,
    /// BGRA, as asked with `PixelFormat::bgra()`.
    pixels: Vec<u8>,
    pub error: Option<String>,
    pub closed: bool,
    pub resizes: u32,
}

impl ViewerState {
    pub fn screen(&self) -> Screen {
        let rgb = self.pixels.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
        Screen { width: self.width, height: self.height, rgb }
    }

    fn resize(&mut self, w: usize, h: usize) {
        if (w, h) != (self.width, self.height) {
            self.resizes += 1;
        }
        (self.width, self.height) = (w, h);
        self.pixels = vec![0; w * h * 4];
    }

    fn apply(&mut self, ev: vnc::VncEvent) {
        match ev {
            vnc::VncEvent::SetResolution(s) => self.resize(s.width as usize, s.height as usize),
            vnc::VncEvent::DesktopUpdate(u) => {
                if let Some(l) = u.layout {
                    self.resize(l.width as usize, l.height as usize);
                }
            }
            vnc::VncEvent::RawImage(r, data) => {
                let (x0, y0, w) = (r.x as usize, r.y as usize, r.width as usize);
                for row in 0..r.height as usize {
                    let dst = ((y0 + row) * self.width + x0) * 4;
                    let src = row * w * 4;
                    if dst + w * 4 <= self.pixels.len() && src + w * 4 <= data.len() {
                        self.pixels[dst..dst + w * 4].copy_from_slice(&data[src..src + w * 4]);
                    }
                }
            }
            vnc::VncEvent::Copy(dst, src) => {
                let snapshot = self.pixels.clone();
                for row in 0..dst.height as usize {
                    let s = ((src.y as usize + row) * self.width + src.x as usize) * 4;
                    let d = ((dst.y as usize + row) * self.width + dst.x as usize) * 4;
                    let n = dst.width as usize * 4;
                    self.pixels[d..d + n].copy_from_slice(&snapshot[s..s + n]);
                }
            }
            vnc::VncEvent::Error(e) => self.error = Some(e),
            _ => {}
        }
    }
}

/// A vnc-rs viewer connected to the proxy, drawing into a shared [`ViewerState`].
pub struct Viewer {
    pub state: Arc<Mutex<ViewerState>>,
    task: tokio::task::JoinHandle<()>,
}

pub async fn connect_viewer(addr: std::net::SocketAddr, token: &str) -> Result<Viewer, vnc::VncError> {
    use vnc::VncEncoding::*;
    connect_viewer_with(addr, token, &[Tight, Zrle, Raw, DesktopSizePseudo]).await
}

/// A viewer that advertises exactly `encodings`, in that order of preference.
pub async fn connect_viewer_with(
    addr: std::net::SocketAddr,
    token: &str,
    encodings: &[vnc::VncEncoding],
) -> Result<Viewer, vnc::VncError> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(vnc::VncError::IoError)?;
    let token = token.to_string();
    let mut connector = vnc::VncConnector::new(tcp).set_auth_method(async move { Ok(token) });
    for e in encodings {
        connector = connector.add_encoding(*e);
    }
    let client = connector
        .allow_shared(true)
        .set_pixel_format(vnc::PixelFormat::bgra())
        .build()?
        .try_start()
        .await?
        .finish()?;
    let state = Arc::new(Mutex::new(ViewerState::default()));
    let st = state.clone();
    let task = tokio::spawn(async move {
        let mut last_refresh = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_millis(50), client.recv_event()).await {
                Ok(Ok(ev)) => st.lock().unwrap().apply(ev),
                Ok(Err(e)) => {
                    let mut s = st.lock().unwrap();
                    s.error = Some(e.to_string());
                    s.closed = true;
                    return;
                }
                Err(_) => {}
            }
            if last_refresh.elapsed() > Duration::from_millis(100) {
                if client.input(vnc::X11Event::Refresh).await.is_err() {
                    st.lock().unwrap().closed = true;
                    return;
                }
                last_refresh = Instant::now();
            }
        }
    });
    Ok(Viewer { state, task })
}

impl Viewer {
    /// Waits until the viewer shows `want`; fails if its connection ends first.
    pub async fn wait_for(&self, want: &Screen, what: &str) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            {
                let s = self.state.lock().unwrap();
                if s.closed {
                    bail!("{what}: viewer connection ended: {:?}", s.error);
                }
                if s.screen() == *want {
                    return Ok(t0.elapsed());
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    bail!("{what}: viewer shows {:?}, VM shows {want:?}", s.screen());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use testkit::ServerHost;

fn server_host_bin() -> anyhow::Result<PathBuf> {
    // Integration tests live in target/<profile>/deps; the workspace's binaries one level up.
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(Path::parent).context("test binary location")?.join("server-host");
    if !bin.exists() {
        bail!("{} is missing: build it with `cargo build -p server-host` (cargo test --workspace does)", bin.display());
    }
    Ok(bin)
}

/// `server-host serve` on loopback with the desktop template (built first if needed), its
/// config, state and log in `dir`; dropping it kills it and every QEMU it started.
pub fn start_server_host(dir: &Path) -> anyhow::Result<ServerHost> {
    let st = Command::new(testkit::repo_root().join("scripts/build-desktop-template")).status()?;
    if !st.success() {
        bail!("scripts/build-desktop-template failed");
    }
    ServerHost::start(&server_host_bin()?, dir, &testkit::cache_dir().join("templates"))
}

/// The broker's side of mutual TLS with `host` (the CA that enrolled it, the client certificate).
pub fn host_tls(host: &ServerHost) -> anyhow::Result<std::sync::Arc<proto::tls::rustls::ClientConfig>> {
    bootserver::broker::flow::host_tls(&host.pki.state)
}

/// `GET /v1{path}` from `host`, with the broker's client certificate.
pub fn host_get(host: &ServerHost, path: &str) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-sf", "-m", "60"])
        .args(host.pki.curl_args())
        .arg(format!("{}/v1{path}", host.url()))
        .output()?;
    if !out.status.success() {
        bail!("curl server-host {path}: {}", out.status);
    }
    Ok(out.stdout)
}

/// The VM's screen from server-host (`GET /v1/vms/NAME/screen`, PPM).
pub fn vm_screen(host: &ServerHost, vm: &str) -> anyhow::Result<Screen> {
    parse_ppm(&host_get(host, &format!("/vms/{vm}/screen"))?)
}

/// Waits until the viewer shows exactly what the VM shows (both change while the VM boots).
pub async fn wait_same(viewer: &Viewer, host: &ServerHost, vm: &str, what: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let vm_now = vm_screen(host, vm)?;
        {
            let s = viewer.state.lock().unwrap();
            if s.closed {
                bail!("{what}: viewer connection ended: {:?}", s.error);
            }
            if s.screen() == vm_now && vm_now.width == 1280 {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(400) {
                bail!("{what}: viewer shows {:?}, VM {vm} shows {vm_now:?}", s.screen());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The VMs server-host runs (`GET /v1/vms`).
pub fn host_vms(host: &ServerHost) -> anyhow::Result<Vec<proto::host::VmInfo>> {
    serde_json::from_slice(&host_get(host, "/vms")?).context("server-host VM list")
}
