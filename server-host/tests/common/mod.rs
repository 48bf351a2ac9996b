//! Test support: a real `server-host` process on 127.0.0.1, enrolled by the CA of `bootserver`
//! (the workspace's binary beside this one), the desktop template, curl with the broker's
//! client certificate as the HTTPS client, the guests' serial shells, and cleanup of every QEMU
//! even when a test fails.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub use testkit::{free_port, repo_root as repo};

/// Builds (once, idempotently) the desktop template and returns the templates folder.
pub fn templates() -> PathBuf {
    let st = Command::new(repo().join("scripts/build-desktop-template")).status().expect("running build-desktop-template");
    assert!(st.success(), "build-desktop-template failed");
    testkit::cache_dir().join("templates")
}

/// A `server-host serve` process and its folders; dropping it kills it and every QEMU it
/// started (found through the pidfiles), then removes the folders.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub pki: testkit::HostPki,
    child: Option<Child>,
    extra: String,
}

/// The `bootserver` binary, which makes the certificates.
pub fn bootserver_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_server-host")).with_file_name("bootserver");
    assert!(p.exists(), "{} is missing: build the workspace binaries (scripts/setup)", p.display());
    p
}

impl Host {
    pub fn start(extra_config: &str) -> Host {
        let dir = tempfile::Builder::new().prefix("server-host-test").tempdir().unwrap();
        let pki = testkit::host_pki(&bootserver_bin(), &dir.path().join("bs-state"), "local", &["127.0.0.1"])
            .expect("certificates");
        let mut h = Host { dir, port: free_port(), pki, child: None, extra: extra_config.to_owned() };
        h.spawn();
        h
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) {
        let cfg = self.dir.path().join("server-host.toml");
        std::fs::write(
            &cfg,
            format!(
                "tls_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ntemplates_dir = \"{}\"\n{}\n",
                self.pki.tls_dir.display(),
                self.port,
                self.state().display(),
                templates().display(),
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server-host.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_server-host"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting server-host");
        self.child = Some(child);
        let t = Instant::now();
        while self.get("/host").0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(60), "server-host did not answer:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the agent (SIGTERM) and starts it again on the same state.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server-host.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/v1{path}", self.port)
    }

    /// (status, body) of one request made with curl as the broker (its client certificate).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        self.call_with(method, path, body, &self.pki.curl_args())
    }

    /// (status, body) of one request made with curl and `tls` (its certificate arguments);
    /// status 0 when there was no HTTP answer.
    pub fn call_with(&self, method: &str, path: &str, body: Option<&str>, tls: &[OsString]) -> (u16, Vec<u8>) {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "600", "-X", method, "-o", "-", "-w", "\n%{http_code}"]);
        c.args(tls);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = c.arg(self.url(path)).output().expect("running curl");
        let mut o = out.stdout;
        let nl = o.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&o[nl + 1..]).trim().parse().unwrap_or(0);
        o.truncate(nl);
        (code, o)
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.call("GET", path, None)
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (c, b) = self.call(method, path, body);
        (c, serde_json::from_slice(&b).unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&b).into())))
    }

    /// Waits until an event of `kind` for `vm` is in the history.
    pub fn wait_event(&self, kind: &str, vm: &str, secs: u64) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let (_, h) = self.json("GET", &format!("/history?vm={vm}"), None);
            if let Some(e) = h.as_array().and_then(|a| a.iter().find(|e| e["kind"] == kind)) {
                return e.clone();
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "no {kind} event for {vm}: {h}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in qemu_pids(&self.state()) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// PIDs of the QEMU processes of this state folder that are still alive.
pub use testkit::server_host_qemu_pids as qemu_pids;

/// The shell on a guest's serial port (the template runs one without echo).
pub struct Console {
    s: UnixStream,
    n: u32,
}

impl Console {
    /// Connects and waits until the guest's shell answers (boots under TCG take a while).
    pub fn open(state: &Path, vm: &str) -> Console {
        let path = state.join("vms").join(vm).join("console.sock");
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(60), "{}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        let mut c = Console { s, n: 0 };
        loop {
            if c.try_run("echo alive", Duration::from_secs(3)).is_some() {
                return c;
            }
            let log = std::fs::read_to_string(state.join("vms").join(vm).join("console.log")).unwrap_or_default();
            assert!(t.elapsed() < Duration::from_secs(600), "guest {vm} never answered; serial:\n{log}");
        }
    }

    fn try_run(&mut self, cmd: &str, wait: Duration) -> Option<(i32, String)> {
        self.n += 1;
        let (b, e) = (format!("__B{}__", self.n), format!("__E{}__", self.n));
        self.s.write_all(format!("echo {b}; {cmd}; echo {e}$?\n").as_bytes()).ok()?;
        self.s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let t = Instant::now();
        let mut buf = Vec::new();
        while t.elapsed() < wait {
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            let text = String::from_utf8_lossy(&buf).replace('\r', "");
            if let (Some(i), Some(j)) = (text.find(&b), text.find(&e)) {
                let rest = &text[j + e.len()..];
                if let Some(nl) = rest.find('\n') {
                    let code = rest[..nl].trim().parse().unwrap_or(-1);
                    return Some((code, text[i + b.len()..j].trim().to_owned()));
                }
            }
        }
        None
    }

    /// Runs a command in the guest and returns (exit status, output).
    pub fn run(&mut self, cmd: &str) -> (i32, String) {
        self.try_run(cmd, Duration::from_secs(120)).unwrap_or_else(|| panic!("no answer from the guest to {cmd:?}"))
    }

    /// Waits until `cmd` succeeds in the guest and returns its output.
    pub fn wait_ok(&mut self, cmd: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let (code, out) = self.run(cmd);
            if code == 0 {
                return out;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "{cmd:?} kept failing: {out}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The screen the template draws for `user`, as RGB bytes (width, height, pixels).
pub fn expected_screen(templates: &Path, user: &str) -> (usize, usize, Vec<u8>) {
    let raw = std::fs::read(templates.join("desktop/pattern.raw")).unwrap();
    let (w, h) = (1280usize, 800usize);
    assert_eq!(raw.len(), w * h * 4);
    let mut rgb: Vec<u8> = raw.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    for r in 0..16 {
        for (i, c) in user.bytes().enumerate() {
            for k in 0..16 {
                let o = (r * w + i * 16 + k) * 3;
                rgb[o..o + 3].copy_from_slice(&[c, c, c]);
            }
        }
    }
    (w, h, rgb)
}

/// Parses a binary PPM (P6, maxval 255) into (width, height, RGB).
pub fn parse_ppm(b: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while b[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while !b[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&b[s..i]).into_owned());
    }
    assert_eq!(fields[0], "P6");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    (w, h, b[i + 1..].to_vec())
}

/// Counts pixels that differ between two RGB images of the same size.
pub fn diff(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count()
}

/// A VNC client (real RFB, VNC password authentication) on a VM's unix socket.
pub async fn vnc_connect(socket: &Path, password: &str) -> vnc::VncClient {
    let stream = tokio::net::UnixStream::connect(socket).await.expect("connecting to the VNC socket");
    let pw = password.to_owned();
    vnc::VncConnector::new(stream)
        .set_auth_method(async move { Ok(pw) })
        .add_encoding(vnc::VncEncoding::Raw)
        .add_encoding(vnc::VncEncoding::DesktopSizePseudo)
        .allow_shared(true)
        .set_pixel_format(vnc::PixelFormat::bgra())
        .build()
        .unwrap()
        .try_start()
        .await
        .expect("VNC handshake")
        .finish()
        .unwrap()
}

/// Reads one full frame through VNC (real RFB client, VNC password authentication) from a
/// unix socket and returns (width, height, RGB).
pub fn vnc_frame(socket: &Path, password: &str) -> (usize, usize, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let vnc = vnc_connect(socket, password).await;
        let (mut w, mut h) = (0usize, 0usize);
        let mut fb: Vec<u8> = Vec::new();
        let mut seen: Vec<bool> = Vec::new();
        vnc.input(vnc::X11Event::FullRefresh).await.unwrap();
        let t = Instant::now();
        loop {
            assert!(t.elapsed() < Duration::from_secs(120), "no full VNC frame");
            let ev = tokio::time::timeout(Duration::from_secs(5), vnc.recv_event()).await;
            match ev {
                Ok(Ok(vnc::VncEvent::SetResolution(s))) => {
                    (w, h) = (s.width as usize, s.height as usize);
                    fb = vec![0; w * h * 3];
                    seen = vec![false; w * h];
                    vnc.input(vnc::X11Event::FullRefresh).await.unwrap();
                }
                Ok(Ok(vnc::VncEvent::RawImage(r, data))) => {
                    for y in 0..r.height as usize {
                        for x in 0..r.width as usize {
                            let (px, py) = (r.x as usize + x, r.y as usize + y);
                            if px >= w || py >= h {
                                continue;
                            }
                            let s = (y * r.width as usize + x) * 4;
                            let d = (py * w + px) * 3;
                            fb[d..d + 3].copy_from_slice(&[data[s + 2], data[s + 1], data[s]]);
                            seen[py * w + px] = true;
                        }
                    }
                    if !seen.is_empty() && seen.iter().all(|s| *s) {
                        let _ = vnc.close().await;
                        return (w, h, fb);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("VNC: {e}"),
                Err(_) => {
                    let _ = vnc.input(vnc::X11Event::FullRefresh).await;
                }
            }
        }
    })
}
