//! Helpers shared by the viewer's integration tests: child processes that die with the test,
//! private X displays, Xvnc, and the screen dumps that serve as the truth (`xwd -root`, QEMU's
//! `screendump`).

#![allow(dead_code)]

pub mod guest;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Kills the process it holds (by its own PID) when the test ends, pass or fail.
pub struct Proc(pub Child, pub &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
    Proc(cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}")), name)
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// X display numbers private to this test process, so parallel tests and other users of the
/// machine do not collide.
pub fn free_display() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = 300 + (std::process::id() % 300) * 4 + NEXT.fetch_add(1, Ordering::SeqCst) % 1000;
        if !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() && !Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            return n;
        }
    }
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A running Xvnc.
pub struct Xvnc {
    pub _p: Proc,
    pub display: u32,
    /// Its unix socket, when it serves on one.
    pub sock: PathBuf,
}

/// Xvnc serving its desktop on a unix socket (no TCP port to collide on).
pub fn xvnc(dir: &Path, w: u32, h: u32) -> Xvnc {
    xvnc_with(dir, w, h, &["-SecurityTypes", "None"])
}

pub fn xvnc_with(dir: &Path, w: u32, h: u32, extra: &[&str]) -> Xvnc {
    let display = free_display();
    let sock = dir.join("xvnc.sock");
    // No TCP port unless the caller asks for one.
    let no_tcp: &[&str] = if extra.contains(&"-rfbport") { &[] } else { &["-rfbport", "-1"] };
    let p = spawn(
        "Xvnc",
        Command::new("Xvnc")
            .arg(format!(":{display}"))
            .args(["-geometry", &format!("{w}x{h}"), "-depth", "24"])
            .args(no_tcp)
            .args(extra)
            .arg("-rfbunixpath")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("Xvnc", Duration::from_secs(30), || sock.exists() && Path::new(&format!("/tmp/.X11-unix/X{display}")).exists());
    Xvnc { _p: p, display, sock }
}

pub fn xvfb(w: u32, h: u32) -> (Proc, u32) {
    let display = free_display();
    let p = spawn(
        "Xvfb",
        Command::new("Xvfb")
            .arg(format!(":{display}"))
            .args(["-screen", "0", &format!("{w}x{h}x24"), "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("Xvfb", Duration::from_secs(30), || Path::new(&format!("/tmp/.X11-unix/X{display}")).exists());
    (p, display)
}

/// Runs an X client on `display` to its end; it must succeed.
pub fn x(display: u32, prog: &str, args: &[&str]) {
    let st = Command::new(prog).args(args).env("DISPLAY", format!(":{display}")).status().unwrap();
    assert!(st.success(), "{prog} {args:?} failed");
}

/// `xwd -root` of a display, decoded (32 bpp ZPixmap, as Xvnc and Xvfb at depth 24 produce).
pub fn xwd_root(display: u32) -> image::RgbImage {
    let o = Command::new("xwd").args(["-root", "-silent"]).env("DISPLAY", format!(":{display}")).output().unwrap();
    assert!(o.status.success());
    let d = o.stdout;
    let u = |i: usize| u32::from_be_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
    let (header, w, h, byte_order, bpp, bpl) = (u(0) as usize, u(4), u(5), u(7), u(11), u(12) as usize);
    let (rm, gm, bm, ncolors) = (u(14), u(15), u(16), u(19) as usize);
    assert_eq!(bpp, 32, "xwd with {bpp} bpp");
    let data = &d[header + ncolors * 12..];
    let ch = |v: u32, m: u32| ((v & m) >> m.trailing_zeros()) as u8;
    image::RgbImage::from_fn(w, h, |px, py| {
        let o = py as usize * bpl + px as usize * 4;
        let b: [u8; 4] = data[o..o + 4].try_into().unwrap();
        let v = if byte_order == 0 { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) };
        image::Rgb([ch(v, rm), ch(v, gm), ch(v, bm)])
    })
}

/// QEMU's screendump: binary PPM (P6, maxval 255).
pub fn read_ppm(path: &Path) -> image::RgbImage {
    let d = std::fs::read(path).unwrap();
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while d[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while !d[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&d[s..i]).into_owned());
    }
    assert_eq!((fields[0].as_str(), fields[3].as_str()), ("P6", "255"));
    let (w, h) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    image::RgbImage::from_raw(w, h, d[i + 1..].to_vec()).expect("PPM size")
}

/// Mean and largest per-channel difference of two images of the same size.
pub fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut sum, mut max) = (0u64, 0u8);
    for (p, q) in a.as_raw().iter().zip(b.as_raw()) {
        let d = p.abs_diff(*q);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, max)
}

/// QEMU's human monitor on a unix socket: one command at a time, answered up to the next
/// prompt.
pub struct Monitor(std::os::unix::net::UnixStream);

impl Monitor {
    pub fn connect(path: &Path) -> Monitor {
        let s = std::os::unix::net::UnixStream::connect(path).unwrap_or_else(|e| panic!("monitor {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut m = Monitor(s);
        m.read_prompt();
        m
    }

    fn read_prompt(&mut self) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            let n = self.0.read(&mut b).expect("reading the QEMU monitor");
            assert!(n > 0, "QEMU monitor closed");
            out.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.0, "{line}").expect("writing to the QEMU monitor");
        self.read_prompt()
    }

    /// `screendump` into `path`, read back.
    pub fn screendump(&mut self, path: &Path) -> image::RgbImage {
        let _ = std::fs::remove_file(path);
        self.cmd(&format!("screendump {}", path.display()));
        wait_for("screendump", Duration::from_secs(30), || std::fs::metadata(path).map(|m| m.len() > 100).unwrap_or(false));
        read_ppm(path)
    }
}

/// Polls a log file until it holds every one of `want`; returns its text either way.
pub fn wait_for_all(path: &Path, want: &[&str], timeout: Duration) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if want.iter().all(|w| text.contains(w)) || t.elapsed() > timeout {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The viewer over SDL showing `server` with ZRLE and writing `shot` (on its first frame and
/// on SIGUSR1); its log goes to `log` when given.
pub fn sdl_viewer(display: u32, server: &str, shot: &Path, log: Option<&Path>) -> Proc {
    let err = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
        None => Stdio::null(),
    };
    spawn(
        "viewer",
        Command::new(env!("CARGO_BIN_EXE_thinclient"))
            .args(["view", server, "--presenter", "sdl", "--encoding", "zrle", "--screenshot"])
            .arg(shot)
            .env("DISPLAY", format!(":{display}"))
            .env("RUST_LOG", "info")
            .stderr(err),
    )
}
