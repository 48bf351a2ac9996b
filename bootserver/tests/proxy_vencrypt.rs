//! TigerVNC's `vncviewer` as the outside peer of the proxy's VeNCrypt X509Plain, from a second
//! host of the lab: the proxy listens on the lab's bridge with a certificate from the test's
//! CA, in front of a QEMU VM held at reset (its fixed 640x480 notice).
//!
//! - With the CA (`-X509CA`) and the token as the Plain password (`VNC_PASSWORD`), vncviewer
//!   shows the VM: its full-screen window under Xvfb equals QEMU's `screendump`, pixel for
//!   pixel, which only a session the proxy let in can draw.
//! - With a wrong token the proxy refuses it, with its reason, inside TLS.
//! - Without the CA vncviewer does not trust the proxy: it asks whether to accept an unknown
//!   issuer, is told no (Escape, as a user would), and never sends the password.
//!
//! Needs qemu-system-x86_64, Xvfb, vncviewer, xwd, xdotool, ip (all from `scripts/setup`).

mod broker_common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bootserver::broker::proxy::{Backend, Proxy, ProxyOptions, ViewerTls};
use broker_common::{parse_ppm, Screen};
use testkit::{KillOnDrop, Lab};

const VIEWER_HOST: u32 = 1;
const VIEWER_IP: &str = "10.77.0.2";

/// Binds a listener inside the lab's namespace (on its bridge address) from a thread that
/// enters it; the socket stays there when handed back.
fn bind_in_lab(lab: &Lab) -> anyhow::Result<std::net::TcpListener> {
    let path = format!("/run/netns/{}", lab.name);
    let addr = format!("{}:0", lab.server_addr());
    std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
        let ns = std::fs::File::open(&path).with_context(|| path.clone())?;
        // SAFETY: setns(2) on a namespace fd we hold; it moves this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let l = std::net::TcpListener::bind(&addr).with_context(|| addr.clone())?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .expect("thread in the lab")
}

/// QEMU held before its first instruction: a still, known screen.
struct Vm {
    _qemu: KillOnDrop,
    vnc: PathBuf,
    monitor: PathBuf,
}

impl Vm {
    fn start(dir: &Path) -> anyhow::Result<Vm> {
        let (vnc, monitor) = (dir.join("vm.vnc"), dir.join("vm.mon"));
        let qemu = KillOnDrop::spawn(
            Command::new("qemu-system-x86_64")
                .args(testkit::accel_args())
                .args(["-S", "-nodefaults", "-m", "64", "-display", "none", "-vga", "std"])
                .arg("-vnc")
                .arg(format!("unix:{}", vnc.display()))
                .arg("-monitor")
                .arg(format!("unix:{},server=on,wait=off", monitor.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )?;
        wait("QEMU's sockets", Duration::from_secs(60), || Ok(vnc.exists() && monitor.exists()))?;
        Ok(Vm { _qemu: qemu, vnc, monitor })
    }

    fn screen(&self, dir: &Path) -> anyhow::Result<Screen> {
        let path = dir.join("dump.ppm");
        let s = UnixStream::connect(&self.monitor).context("QEMU monitor")?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let prompt = |r: &mut BufReader<UnixStream>| -> anyhow::Result<()> {
            let mut out = Vec::new();
            while !out.ends_with(b"(qemu) ") {
                let n = r.read_until(b' ', &mut out)?;
                if n == 0 {
                    bail!("QEMU monitor closed");
                }
            }
            Ok(())
        };
        prompt(&mut r)?;
        writeln!(&s, "screendump {}", path.display())?;
        prompt(&mut r)?;
        parse_ppm(&std::fs::read(&path)?)
    }
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let t = Instant::now();
    while !done()? {
        if t.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// An X server without a window manager for vncviewer to draw into.
fn xvfb(w: u32, h: u32) -> anyhow::Result<(KillOnDrop, u32)> {
    let n = (140..400)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .context("no free X display")?;
    let x = KillOnDrop::spawn(
        Command::new("Xvfb")
            .arg(format!(":{n}"))
            .args(["-screen", "0", &format!("{w}x{h}x24"), "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait("Xvfb", Duration::from_secs(20), || Ok(Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()))?;
    Ok((x, n))
}

/// The X screen as RGB, from `xwd -root` (ZPixmap, 32 bits per pixel).
fn xwd_root(display: u32) -> anyhow::Result<Screen> {
    let out = Command::new("xwd").args(["-root", "-silent", "-display", &format!(":{display}")]).output()?;
    if !out.status.success() {
        bail!("xwd: {}", String::from_utf8_lossy(&out.stderr));
    }
    let d = out.stdout;
    let field = |i: usize| -> anyhow::Result<u32> {
        Ok(u32::from_be_bytes(d.get(i * 4..i * 4 + 4).context("short XWD header")?.try_into()?))
    };
    let (header, width, height, lsb_first) =
        (field(0)? as usize, field(4)? as usize, field(5)? as usize, field(7)? == 0);
    let (bpp, stride, ncolors) = (field(11)?, field(12)? as usize, field(19)? as usize);
    let masks = (field(14)?, field(15)?, field(16)?);
    if bpp != 32 {
        bail!("XWD with {bpp} bits per pixel");
    }
    let start = header + ncolors * 12;
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let at = start + y * stride + x * 4;
            let b: [u8; 4] = d.get(at..at + 4).context("short XWD")?.try_into()?;
            let p = if lsb_first { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) };
            let c = |m: u32| ((p & m) >> m.trailing_zeros()) as u8;
            rgb.extend([c(masks.0), c(masks.1), c(masks.2)]);
        }
    }
    Ok(Screen { width, height, rgb })
}

/// The names of the X windows on `display` (a dialog that vncviewer waits on shows here).
fn windows(display: u32) -> Vec<String> {
    let names = Command::new("xdotool")
        .args(["search", "--name", "."])
        .env("DISPLAY", format!(":{display}"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    names
        .lines()
        .filter_map(|w| {
            let o = Command::new("xdotool").args(["getwindowname", w]).env("DISPLAY", format!(":{display}")).output();
            o.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .collect()
}

/// vncviewer in the viewer host, full screen on `display`, its output in `log`.
fn vncviewer(
    lab: &Lab,
    display: u32,
    home: &Path,
    proxy: &str,
    password: &str,
    ca: Option<&Path>,
    log: &Path,
) -> anyhow::Result<KillOnDrop> {
    std::fs::create_dir_all(home)?;
    let mut c = lab.host_cmd(VIEWER_HOST, "vncviewer");
    c.env("DISPLAY", format!(":{display}"))
        // A fresh home: no certificate saved by an earlier run, no settings.
        .env("HOME", home)
        .env("VNC_USERNAME", "viewer")
        .env("VNC_PASSWORD", password)
        .args(["-SecurityTypes", "X509Plain", "-FullScreen", "-NoJPEG", "-AutoSelect=0", "-PreferredEncoding=ZRLE"])
        .args(["-FullColor", "-ReconnectOnError=0", "-AlertOnFatalError=0", "-Shared"]);
    if let Some(ca) = ca {
        c.arg("-X509CA").arg(ca);
    }
    c.arg(proxy)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(log.with_extension("err"))?);
    KillOnDrop::spawn(&mut c)
}

fn viewer_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
        + &std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
}

/// Waits for vncviewer to exit on its own.
fn exits(viewer: &mut KillOnDrop, limit: Duration) -> anyhow::Result<()> {
    wait("vncviewer to exit", limit, || Ok(viewer.0.try_wait()?.is_some()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tigervnc_x509plain_shows_the_vm_and_nothing_without_ca_or_token() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let lab = Lab::new(0, 1)?;
    let out =
        lab.host_cmd(VIEWER_HOST, "ip").args(["addr", "add", &format!("{VIEWER_IP}/24"), "dev", "eth0"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The deployment's CA and the proxy's certificate for its address on the bridge.
    let state = dir.path().join("state");
    let names = bootserver::ca::ServerNames { ips: vec![lab.server_addr().parse()?], dns: vec![] };
    let (cert, key) = bootserver::ca::ensure_server(&state, &names)?;
    let ca = bootserver::ca::CaFiles::new(&state).ca_cert();

    let vm = Vm::start(dir.path())?;
    let truth = vm.screen(dir.path())?;
    assert_eq!((truth.width, truth.height), (640, 480));
    let proxy = Proxy::new(ProxyOptions {
        tls: Some(ViewerTls::from_files(&cert, &key)?),
        auth_fail_delay: Duration::from_millis(10),
        ..Default::default()
    });
    let backend =
        Backend { addr: format!("unix:{}", vm.vnc.display()).parse().map_err(anyhow::Error::msg)?, password: None };
    let token = proxy.open_session("tiger", backend);
    let listener = tokio::net::TcpListener::from_std(bind_in_lab(&lab)?)?;
    let proxy_addr = listener.local_addr()?;
    let limits = bootserver::net::limits::Limits::default().proxy;
    let server =
        tokio::spawn(proxy.clone().serve(listener, bootserver::net::limits::ConnLimiter::unbounded("proxy", limits)));
    let target = format!("{}::{}", proxy_addr.ip(), proxy_addr.port());
    // One vncviewer run: its own home (no certificate saved by an earlier run) and log.
    let run = |name: &str, display: u32, password: &str, ca: Option<&Path>| {
        let log = dir.path().join(format!("{name}.log"));
        vncviewer(&lab, display, &dir.path().join(format!("home-{name}")), &target, password, ca, &log)
            .map(|v| (v, log))
    };
    let connections = || proxy.sessions()[0].viewer_connections;

    let (_xvfb, display) = xvfb(640, 480)?;
    let black = xwd_root(display)?;
    assert_ne!(black, truth, "the empty X screen must differ from the VM's");

    // With the CA and the token: the VM, pixel for pixel.
    let (mut good, log) = run("good", display, &token, Some(&ca))?;
    let shown = tokio::task::spawn_blocking(move || {
        let mut last = None;
        let r = wait("vncviewer showing the VM", Duration::from_secs(60), || {
            let s = xwd_root(display)?;
            let same = s == truth;
            last = Some(s);
            Ok(same)
        });
        (r, last)
    })
    .await?;
    if let (Err(e), last) = shown {
        bail!("{e:#}; screen {last:?}; windows {:?}; vncviewer: {}", windows(display), viewer_log(&log));
    }
    let s = &proxy.sessions()[0];
    assert!(s.viewer_connected && s.viewer_connections == 1, "{s:?}");
    let _ = good.stop(Duration::from_secs(2));
    eprintln!("vncviewer with the CA and the token shows the VM");

    // A wrong token: the proxy refuses, with its reason, and opens nothing.
    let (mut wrong, log) = run("wrong", display, "not-the-token", Some(&ca))?;
    exits(&mut wrong, Duration::from_secs(30))?;
    let text = viewer_log(&log);
    assert!(text.contains("unknown or expired session token"), "vncviewer with a wrong token: {text}");
    assert_eq!(connections(), 1, "a wrong token opened the session");

    // Without the CA: vncviewer cannot verify the proxy, asks, is told no, and sends nothing.
    let (mut noca, log) = run("noca", display, &token, None)?;
    let question = "Unknown certificate issuer";
    let mut window = String::new();
    wait("vncviewer's question about the unknown issuer", Duration::from_secs(30), || {
        let o = Command::new("xdotool")
            .args(["search", "--name", question])
            .env("DISPLAY", format!(":{display}"))
            .output()?;
        window = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string();
        Ok(!window.is_empty())
    })
    .with_context(|| viewer_log(&log))?;
    assert_eq!(connections(), 1, "the password reached the proxy before the certificate was accepted");
    // No window manager: the key goes to the window under the pointer.
    for args in [vec!["mousemove", "--window", &window, "20", "20"], vec!["key", "Escape"]] {
        let st = Command::new("xdotool").args(&args).env("DISPLAY", format!(":{display}")).status()?;
        assert!(st.success(), "xdotool {args:?}");
    }
    exits(&mut noca, Duration::from_secs(30))?;
    let text = viewer_log(&log);
    assert!(text.contains(&format!("Authentication failure: {question}")), "vncviewer without the CA: {text}");
    assert_eq!(connections(), 1, "a viewer that does not trust the proxy got in");
    server.abort();
    Ok(())
}
