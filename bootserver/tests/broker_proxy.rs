//! The VNC proxy against real QEMU VNC servers and a real viewer engine (vnc-rs): the viewer
//! sees its own VM, a backend switch under a live connection shows the new VM's screen
//! without a reconnect (across a change of screen size and with Tight's zlib streams, or with
//! ZRLE's single zlib stream, which the proxy re-compresses), a wrong token is refused and a
//! token opens only its own VM.
//!
//! The vnc-rs release these tests drive speaks VNC authentication only, so the proxies here
//! allow it (`legacy_vnc_auth`); VeNCrypt is covered by the proxy's handshake tests, by
//! `proxy_vencrypt` (TigerVNC) and by the client's lab tests (the vendored vnc-rs).
//!
//! VM A is a QEMU held at reset (`-S`): QEMU draws a fixed 640x480 notice. VM B runs its BIOS,
//! which finds nothing to boot, says so on the 720x400 VGA text console and halts (no kernel
//! boot: a few seconds under TCG). Both are still, apart from B's blinking text cursor, so each
//! can be compared with its `screendump` (a viewer shows B's dump at least every other blink).

mod broker_common;

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bootserver::broker::proxy::{Backend, Proxy, ProxyOptions};
use broker_common::{connect_viewer, connect_viewer_with, parse_ppm, Screen};
use testkit::KillOnDrop;

struct Vm {
    _qemu: KillOnDrop,
    vnc: PathBuf,
    monitor: PathBuf,
    password: String,
}

impl Vm {
    fn start(dir: &Path, name: &str, password: &str, extra: &[&str]) -> anyhow::Result<Vm> {
        let vnc = dir.join(format!("{name}.vnc"));
        let monitor = dir.join(format!("{name}.mon"));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(testkit::accel_args())
            .args(["-m", "128", "-nic", "none", "-display", "none", "-vga", "std"])
            .arg("-vnc")
            .arg(format!("unix:{},password=on", vnc.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let qemu = KillOnDrop::spawn(&mut cmd)?;
        let vm = Vm { _qemu: qemu, vnc, monitor, password: password.to_string() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(vm.vnc.exists() && vm.monitor.exists()) {
            if Instant::now() > deadline {
                bail!("QEMU {name} did not create its sockets");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        vm.hmp(&format!("set_password vnc {password}"))?;
        Ok(vm)
    }

    fn backend(&self) -> Backend {
        Backend { addr: format!("unix:{}", self.vnc.display()).parse().unwrap(), password: Some(self.password.clone()) }
    }

    /// Runs one human monitor command and returns its output.
    fn hmp(&self, command: &str) -> anyhow::Result<String> {
        let s = UnixStream::connect(&self.monitor).context("connecting to the QEMU monitor")?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let read_prompt = |r: &mut BufReader<UnixStream>| -> anyhow::Result<String> {
            let mut out = Vec::new();
            loop {
                let mut byte = [0u8; 1];
                r.read_exact(&mut byte)?;
                out.push(byte[0]);
                if out.ends_with(b"(qemu) ") {
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
            }
        };
        read_prompt(&mut r)?;
        writeln!(w, "{command}")?;
        let out = read_prompt(&mut r)?;
        Ok(out)
    }

    /// The VM's screen as (width, height, RGB bytes), via `screendump` (PPM).
    fn screen(&self, dir: &Path) -> anyhow::Result<Screen> {
        let path = dir.join("dump.ppm");
        let _ = std::fs::remove_file(&path);
        self.hmp(&format!("screendump {}", path.display()))?;
        let data = std::fs::read(&path).context("reading the screendump")?;
        parse_ppm(&data)
    }
}

/// VM B: no disk, no network, and no reboot after the failed boot.
const B_ARGS: &[&str] = &["-boot", "reboot-timeout=-1"];

/// Waits until the BIOS has given up booting: the text console is up and has stopped changing
/// apart from the cursor.
fn wait_bios_done(vm: &Vm, dir: &Path) -> anyhow::Result<Screen> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = vm.screen(dir)?;
        if (s.width, s.height) == (720, 400) {
            // SeaBIOS tries its boot devices within a second of drawing its banner.
            std::thread::sleep(Duration::from_secs(3));
            return vm.screen(dir);
        }
        if Instant::now() > deadline {
            bail!("VM B's BIOS did not reach its text console: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Both VMs, started and settled, with their screens.
struct Vms {
    a: Vm,
    b: Vm,
    screen_a: Screen,
    screen_b: Screen,
}

fn start_vms(dir: &Path) -> anyhow::Result<Vms> {
    let b = Vm::start(dir, "b", "pw-b-123", B_ARGS)?;
    let a = Vm::start(dir, "a", "pw-a-456", &["-S"])?;
    let screen_b = wait_bios_done(&b, dir)?;
    let screen_a = a.screen(dir)?;
    assert_ne!(screen_a, screen_b, "the two VMs must look different for this test to mean anything");
    assert_eq!((screen_a.width, screen_a.height), (640, 480));
    assert_eq!((screen_b.width, screen_b.height), (720, 400));
    Ok(Vms { a, b, screen_a, screen_b })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_switches_backends_under_a_live_viewer() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let Vms { a: vm_a, b: vm_b, screen_a, screen_b } = start_vms(dir.path())?;

    let proxy = Proxy::new(ProxyOptions { auth_fail_delay: Duration::from_millis(10), legacy_vnc_auth: true, ..Default::default() });
    let token_a = proxy.open_session("user-a", vm_a.backend());
    let token_b = proxy.open_session("user-b", vm_b.backend());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(proxy.clone().serve(listener, bootserver::net::limits::ConnLimiter::unbounded("proxy", bootserver::net::limits::Limits::default().proxy)));

    // A wrong token is refused.
    assert!(connect_viewer(addr, "wrong-tk").await.is_err(), "a wrong token must be refused");

    // Each token opens its own VM and no other.
    let viewer_b = connect_viewer(addr, &token_b).await?;
    viewer_b.wait_for(&screen_b, "token B shows VM B").await?;
    let viewer_a = connect_viewer(addr, &token_a).await?;
    viewer_a.wait_for(&screen_a, "token A shows VM A").await?;
    drop(viewer_b);

    // Hard handoff of user A to VM B's screen, under the live connection.
    let report = proxy.switch("user-a", vm_b.backend()).await?;
    assert!(report.viewer_connected && report.resized, "{report:?}");
    let shown_after = viewer_a.wait_for(&screen_b, "after the switch, viewer A shows VM B").await?;
    eprintln!("switch: {report:?}; viewer showed the new screen {shown_after:?} after the switch returned");
    {
        let s = viewer_a.state.lock().unwrap();
        assert!(!s.closed && s.error.is_none(), "viewer saw an error: {:?}", s.error);
        assert_eq!(s.resizes, 2, "one size at connect, one at the switch");
    }
    // A new token for user A (as at a reconnect or handoff): the old one opens nothing any
    // more, and the viewer connected with it stays connected.
    let rotated = proxy.issue_token("user-a").expect("user A's session");
    assert_ne!(rotated, token_a);
    assert!(connect_viewer(addr, &token_a).await.is_err(), "a rotated-out token must be refused");
    assert_eq!(proxy.authenticate_token(&rotated).map(|(id, ..)| id).as_deref(), Some("user-a"));
    assert!(proxy.authenticate_token(&token_a).is_none());
    let a = proxy.sessions().into_iter().find(|s| s.label == "user-a").unwrap();
    assert!(a.viewer_connected && a.viewer_connections == 1, "{a:?}");
    // And back under the same connection, to check that the viewer's zlib streams were reset
    // and stay in step.
    proxy.switch("user-a", vm_a.backend()).await?;
    viewer_a.wait_for(&screen_a, "after switching back, viewer A shows VM A").await?;
    assert!(!viewer_a.state.lock().unwrap().closed, "the rotation closed the live viewer");
    // The new token opens the same session (its viewer replaces the older one).
    let second = connect_viewer(addr, &rotated).await?;
    second.wait_for(&screen_a, "the new token opens user A's session").await?;
    drop(second);

    // A token that no longer exists opens nothing.
    proxy.close_session("user-b");
    assert!(connect_viewer(addr, &token_b).await.is_err(), "a closed session's token must be refused");
    server.abort();
    Ok(())
}

/// A viewer that speaks only ZRLE: the proxy offers ZRLE to the VMs and re-compresses it into
/// the viewer's stream, which must go on decoding cleanly across switches in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zrle_passes_through_switches() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let vms = start_vms(dir.path())?;

    let proxy = Proxy::new(ProxyOptions { legacy_vnc_auth: true, ..Default::default() });
    let token = proxy.open_session("user-z", vms.a.backend());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(proxy.clone().serve(listener, bootserver::net::limits::ConnLimiter::unbounded("proxy", bootserver::net::limits::Limits::default().proxy)));
    let recoded = || proxy.sessions()[0].recoded_rects;

    use vnc::VncEncoding::{DesktopSizePseudo, Zrle};
    let viewer = connect_viewer_with(addr, &token, &[Zrle, DesktopSizePseudo]).await?;
    viewer.wait_for(&vms.screen_a, "ZRLE viewer shows VM A").await?;
    let before = recoded();
    assert!(before > 0, "VM A's screen must have come as ZRLE rectangles re-compressed by the proxy");

    let report = proxy.switch("user-z", vms.b.backend()).await?;
    assert!(report.viewer_connected && report.resized, "{report:?}");
    viewer.wait_for(&vms.screen_b, "after the switch, the ZRLE viewer shows VM B").await?;
    let after_b = recoded();
    assert!(after_b > before, "VM B's frame must have come as ZRLE too");

    proxy.switch("user-z", vms.a.backend()).await?;
    viewer.wait_for(&vms.screen_a, "after switching back, the ZRLE viewer shows VM A").await?;
    assert!(recoded() > after_b);
    {
        let s = viewer.state.lock().unwrap();
        assert!(!s.closed && s.error.is_none(), "viewer saw an error: {:?}", s.error);
        assert_eq!(s.resizes, 3, "one size at connect, one at each switch");
    }
    server.abort();
    Ok(())
}
