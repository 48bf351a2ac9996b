//! `thinclient view` against real VNC servers: TigerVNC's Xvnc with known X content and QEMU's
//! built-in server, each compared pixel for pixel with the server's own screen dump; input
//! injected into the SDL window under Xvfb and seen by an X client on the desktop; and a lying
//! RFB server that must produce errors and reconnects, never a crash.
//!
//! Needs Xvnc, Xvfb, xwd, xwud, xsetroot, xlogo, xev, xdotool and qemu-system-x86_64 (all from
//! `scripts/setup`).

mod viewer_support;

use std::io::{BufRead, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viewer_support::*;

const VIEWER: &str = env!("CARGO_BIN_EXE_thinclient");

/// Runs the viewer (SDL under Xvfb) until it wrote its first-frame screenshot and exited.
fn viewer_shot(display: u32, server: &str, encoding: &str, out: &Path) -> image::RgbImage {
    let o = Command::new(VIEWER)
        .args(["view", server, "--presenter", "sdl", "--once", "--encoding", encoding, "--screenshot"])
        .arg(out)
        .args(["--screenshot-delay", "0.5", "--exit-after-screenshot"])
        .env("DISPLAY", format!(":{display}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "viewer failed for {encoding}: {}", String::from_utf8_lossy(&o.stderr));
    image::open(out).unwrap().into_rgb8()
}

/// An XWD file of a smooth colour gradient: photo-like content that makes Tight use JPEG.
fn gradient_xwd(path: &Path, w: u32, h: u32) {
    let name = b"gradient\0";
    let header_len = 100 + name.len() as u32;
    let fields = [
        header_len, 7, 2, 24, w, h, 0, 1, 32, 1, 32, 32, w * 4, 4, 0xff0000, 0xff00, 0xff, 8, 0, 0, w, h, 0, 0, 0,
    ];
    let mut f = Vec::new();
    for v in fields {
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(name);
    for y in 0..h {
        for x in 0..w {
            let r = x * 255 / w;
            let g = y * 255 / h;
            let b = ((x + y) * 7 % 256) / 2 + 64;
            f.extend_from_slice(&(r << 16 | g << 8 | b).to_be_bytes());
        }
    }
    std::fs::write(path, f).unwrap();
}

#[test]
fn xvnc_screen_matches_for_every_encoding() {
    let dir = tmpdir();
    let srv = xvnc(dir.path(), 800, 600);
    let (_xvfb, vd) = xvfb(800, 600);
    x(srv.display, "xsetroot", &["-mod", "7", "5", "-fg", "orange", "-bg", "navy"]);
    let gx = dir.path().join("gradient.xwd");
    gradient_xwd(&gx, 320, 240);
    let sd = format!(":{}", srv.display);
    let _logo = spawn("xlogo", Command::new("xlogo").args(["-display", &sd, "-geometry", "200x150+40+50"]).stderr(Stdio::null()));
    let _grad = spawn(
        "xwud",
        Command::new("xwud").args(["-display", &sd, "-geometry", "+420+300", "-in"]).arg(&gx).stderr(Stdio::null()),
    );
    // Both windows mapped: the root dump then holds the logo and the gradient.
    wait_for("windows", Duration::from_secs(30), || {
        let img = xwd_root(srv.display);
        img.get_pixel(500, 400) != img.get_pixel(0, 0) && img.get_pixel(100, 100) != img.get_pixel(0, 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    let truth = xwd_root(srv.display);
    let server = format!("unix:{}", srv.sock.display());
    for enc in ["raw", "zrle", "trle", "tight"] {
        let shot = viewer_shot(vd, &server, enc, &dir.path().join(format!("{enc}.png")));
        let (mean, max) = diff(&shot, &truth);
        assert_eq!(max, 0, "{enc}: differs from the server's screen (mean {mean:.3})");
    }
    // JPEG is lossy: mean error at most 3 levels of 255 per channel, and no pixel off by more
    // than 96 (ringing at the gradient's hard edges).
    let shot = viewer_shot(vd, &server, "tight-jpeg", &dir.path().join("jpeg.png"));
    let (mean, max) = diff(&shot, &truth);
    eprintln!("tight-jpeg: mean error {mean:.3}, max {max}");
    assert!(mean <= 3.0 && max <= 96, "tight-jpeg: mean {mean:.3}, max {max}");
}

#[test]
fn keys_clicks_and_wheel_reach_an_x_client() {
    let dir = tmpdir();
    let srv = xvnc(dir.path(), 640, 480);
    let (_xvfb, vd) = xvfb(640, 480);
    let sd = format!(":{}", srv.display);
    let log_path = dir.path().join("xev.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _xev = spawn(
        "xev",
        Command::new("xev")
            .args(["-display", &sd, "-geometry", "600x400+0+0", "-event", "keyboard", "-event", "button"])
            .stdout(log)
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let ready = dir.path().join("ready.png");
    let _viewer = sdl_viewer(vd, &format!("unix:{}", srv.sock.display()), &ready, None);
    wait_for("viewer's first frame", Duration::from_secs(60), || ready.exists());
    let xd = |args: &[&str]| x(vd, "xdotool", args);
    xd(&["mousemove", "200", "150"]);
    std::thread::sleep(Duration::from_millis(300));
    xd(&["click", "1"]);
    xd(&["click", "3"]);
    xd(&["click", "4"]);
    xd(&["type", "--delay", "50", "aZ1"]);
    xd(&["key", "ctrl+x"]);
    let want = ["button 1,", "button 3,", "button 4,", "(keysym 0x61, a)", "(keysym 0x5a, Z)", "(keysym 0x31, 1)", "(keysym 0x78, x)", "Control_L"];
    let text = wait_for_all(&log_path, &want, Duration::from_secs(60));
    for w in want {
        assert!(text.contains(w), "xev never saw {w:?}; it logged:\n{text}");
    }
    // The click landed where the pointer was: xev window coordinates equal the desktop's.
    assert!(text.contains("(200,150)"), "click position not (200,150):\n{text}");
}

#[test]
fn vnc_password_from_file_and_from_fd() {
    use std::os::unix::process::CommandExt;
    let dir = tmpdir();
    let obfuscated = Command::new("sh").args(["-c", "echo secret | vncpasswd -f"]).output().unwrap();
    assert!(obfuscated.status.success(), "vncpasswd");
    let pwfile = dir.path().join("xvnc.passwd");
    std::fs::write(&pwfile, &obfuscated.stdout).unwrap();
    let srv = xvnc_with(dir.path(), 320, 240, &["-SecurityTypes", "VncAuth", "-PasswordFile", pwfile.to_str().unwrap()]);
    x(srv.display, "xsetroot", &["-solid", "#336699"]);
    let (_xvfb, vd) = xvfb(320, 240);
    let server = format!("unix:{}", srv.sock.display());
    let run = |extra: &[&str], fd: Option<&str>| {
        let mut cmd = Command::new(VIEWER);
        cmd.args(["view", &server, "--presenter", "sdl", "--once", "--screenshot"])
            .arg(dir.path().join("pw.png"))
            .args(["--exit-after-screenshot"])
            .args(extra)
            .env("DISPLAY", format!(":{vd}"));
        if let Some(pw) = fd.map(str::to_owned) {
            // The agent's way: the password in a pipe whose read end the viewer inherits as fd 3.
            unsafe {
                cmd.pre_exec(move || {
                    let mut p = [0; 2];
                    if libc::pipe(p.as_mut_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::write(p[1], pw.as_ptr().cast(), pw.len());
                    libc::close(p[1]);
                    if p[0] != 3 {
                        libc::dup2(p[0], 3);
                        libc::close(p[0]);
                    }
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    };
    let good = dir.path().join("good");
    std::fs::write(&good, "secret\n").unwrap();
    // VNC authentication alone gives the password away to anyone who records the exchange:
    // refused unless allowed, and the reason says how to allow it.
    let o = run(&["--password-file", good.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("offers only VNC authentication") && err.contains("--allow-vnc-auth"), "{err}");
    let o = run(&["--allow-vnc-auth", "--password-file", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(dir.path().join("pw.png")).unwrap().into_rgb8();
    assert_eq!(img.get_pixel(10, 10).0, [0x33, 0x66, 0x99]);
    let o = run(&["--allow-vnc-auth", "--password-fd", "3"], Some("secret\n"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong\n").unwrap();
    let o = run(&["--allow-vnc-auth", "--password-file", bad.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.to_lowercase().contains("authentication failure"), "{err}");
}

/// QEMU paused before its first instruction shows its own "display not initialized" screen:
/// stable and known. Its `screendump` is the truth.
#[test]
fn qemu_screen_matches_screendump() {
    let dir = tmpdir();
    let vnc = dir.path().join("vnc.sock");
    let mon = dir.path().join("mon.sock");
    let _qemu = spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args(["-S", "-nodefaults", "-display", "none", "-vga", "std", "-machine", "pc,accel=tcg"])
            .arg("-vnc")
            .arg(format!("unix:{}", vnc.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", mon.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("QEMU sockets", Duration::from_secs(60), || vnc.exists() && mon.exists());
    let (_xvfb, vd) = xvfb(800, 600);
    let ppm = dir.path().join("dump.ppm");
    {
        let mut m = std::os::unix::net::UnixStream::connect(&mon).unwrap();
        writeln!(m, "screendump {}", ppm.display()).unwrap();
        wait_for("screendump", Duration::from_secs(30), || std::fs::metadata(&ppm).map(|m| m.len() > 100).unwrap_or(false));
        std::thread::sleep(Duration::from_millis(300));
    }
    let truth = read_ppm(&ppm);
    let server = format!("unix:{}", vnc.display());
    for enc in ["zrle", "tight", "raw"] {
        let shot = viewer_shot(vd, &server, enc, &dir.path().join(format!("{enc}.png")));
        let (mean, max) = diff(&shot, &truth);
        assert_eq!(max, 0, "{enc}: differs from QEMU's screendump (mean {mean:.3})");
    }
}

/// One lie per connection; the viewer must survive them all and come back for more.
fn lie(mut s: std::net::TcpStream, which: usize) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = [0u8; 12];
    let _ = s.write_all(b"RFB 003.008\n");
    if s.read_exact(&mut buf).is_err() {
        return;
    }
    let _ = s.write_all(&[1, 1]); // one security type: None
    let mut one = [0u8; 1];
    let _ = s.read_exact(&mut one);
    let _ = s.write_all(&0u32.to_be_bytes());
    let _ = s.read_exact(&mut one); // ClientInit
    let pf = [32u8, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
    let init = |w: u16, h: u16| {
        let mut v = Vec::new();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&pf);
        v.extend_from_slice(&4u32.to_be_bytes());
        v.extend_from_slice(b"liar");
        v
    };
    let rect = |x: u16, y: u16, w: u16, h: u16, enc: i32| {
        let mut v = vec![0u8, 0, 0, 1];
        for n in [x, y, w, h] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&enc.to_be_bytes());
        v
    };
    let msg = match which {
        0 => init(0, 0),
        1 => init(65535, 65535),
        2 => [init(64, 48), rect(0, 0, 64, 48, 0x1234_5678)].concat(),
        3 => [init(64, 48), rect(0, 0, 64, 48, 0), vec![0x55; 64 * 20 * 4]].concat(),
        4 => [init(64, 48), rect(0, 0, 64, 48, 16), u32::MAX.to_be_bytes().to_vec()].concat(),
        _ => [init(64, 48), rect(60, 40, 64, 48, 0)].concat(),
    };
    let _ = s.write_all(&msg);
    std::thread::sleep(Duration::from_millis(300));
    // Dropping the stream ends the connection, mid-rectangle for lie 3.
}

#[test]
fn lying_server_gets_errors_and_reconnects() {
    const LIES: usize = 6;
    let dir = tmpdir();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(s) = s else { continue };
            if n >= LIES {
                return; // the viewer came back after the last lie
            }
            lie(s, n);
        }
    });
    let (_xvfb, vd) = xvfb(640, 480);
    let log = dir.path().join("viewer.log");
    let shot = dir.path().join("status.png");
    let viewer = spawn(
        "viewer",
        Command::new(VIEWER)
            .args(["view", &addr.to_string(), "--presenter", "sdl", "--reconnect-max-delay", "1", "--screenshot"])
            .arg(&shot)
            .env("DISPLAY", format!(":{vd}"))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let t = Instant::now();
    while !server.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(120), "viewer did not come back after every lie");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still running (no panic), and the status line is on screen: ask for a screenshot.
    let mut viewer = viewer;
    assert!(viewer.0.try_wait().unwrap().is_none(), "viewer exited");
    std::thread::sleep(Duration::from_millis(700));
    unsafe { libc::kill(viewer.0.id() as i32, libc::SIGUSR1) };
    wait_for("status screenshot", Duration::from_secs(20), || shot.exists());
    let img = image::open(&shot).unwrap().into_rgb8();
    let bar = img.pixels().take(img.width() as usize * 4).filter(|p| p.0 == [0x90, 0x20, 0x30]).count();
    assert!(bar > 100, "no status line in the screenshot");
    let text = std::fs::read_to_string(&log).unwrap();
    for w in ["out of range", "unknown encoding", "exceeds", "retrying"] {
        assert!(text.contains(w), "log lacks {w:?}:\n{text}");
    }
    assert!(!text.contains("panicked"), "{text}");
    let lines = std::io::BufReader::new(std::fs::File::open(&log).unwrap()).lines().count();
    assert!(lines > LIES, "{text}");
}

/// The server's desktop changes size under a live session (`xrandr -s` on Xvnc, which then
/// sends ExtendedDesktopSize): the viewer follows, and what it shows equals the new screen.
#[test]
fn desktop_resize_is_followed() {
    follows_resizes(false);
}

/// The same with the legacy DesktopSize pseudo-encoding: a proxy takes ExtendedDesktopSize out
/// of the viewer's SetEncodings, so Xvnc can only announce the new size the old way.
#[test]
fn plain_desktop_size_is_followed() {
    follows_resizes(true);
}

/// Forwards one connection from `listen` to the server at `server`, with ExtendedDesktopSize
/// (-308) in the client's SetEncodings replaced by Raw (listed twice: harmless).
fn without_extended_desktop_size(listen: &Path, server: &Path) {
    use std::os::unix::net::{UnixListener, UnixStream};
    let l = UnixListener::bind(listen).unwrap();
    let server = server.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = l.accept()?;
        let mut s = UnixStream::connect(&server)?;
        let (mut c2, mut s2) = (c.try_clone()?, s.try_clone()?);
        std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
        // Version, security type, ClientInit: each waits for the server's answer to the last.
        for n in [12, 1, 1] {
            let mut b = vec![0; n];
            c.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        let read = |c: &mut UnixStream, n: usize| -> std::io::Result<Vec<u8>> {
            let mut b = vec![0; n];
            c.read_exact(&mut b)?;
            Ok(b)
        };
        loop {
            let mut msg = read(&mut c, 1)?;
            match msg[0] {
                0 => msg.extend(read(&mut c, 19)?),
                3 => msg.extend(read(&mut c, 9)?),
                4 => msg.extend(read(&mut c, 7)?),
                5 => msg.extend(read(&mut c, 5)?),
                2 => {
                    let head = read(&mut c, 3)?;
                    let n = u16::from_be_bytes([head[1], head[2]]) as usize;
                    msg.extend(head);
                    for e in read(&mut c, 4 * n)?.chunks_exact(4) {
                        let e = if i32::from_be_bytes(e.try_into().unwrap()) == -308 { [0; 4] } else { e.try_into().unwrap() };
                        msg.extend(e);
                    }
                }
                6 => {
                    let head = read(&mut c, 7)?;
                    let n = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
                    msg.extend(head);
                    msg.extend(read(&mut c, n)?);
                }
                t => panic!("client message type {t} unknown to this proxy"),
            }
            s.write_all(&msg)?;
        }
    });
}

fn follows_resizes(legacy: bool) {
    let dir = tmpdir();
    let srv = xvnc(dir.path(), 1024, 768);
    x(srv.display, "xsetroot", &["-mod", "3", "9", "-fg", "#c04020", "-bg", "#102030"]);
    let sd = format!(":{}", srv.display);
    let _logo = spawn("xlogo", Command::new("xlogo").args(["-display", &sd, "-geometry", "160x120+30+30"]).stderr(Stdio::null()));
    let (_xvfb, vd) = xvfb(1024, 768);
    wait_for("xlogo", Duration::from_secs(30), || {
        let img = xwd_root(srv.display);
        img.get_pixel(80, 80) != img.get_pixel(500, 500)
    });
    let shot = dir.path().join("resize.png");
    let log = dir.path().join("viewer.log");
    let target = if legacy {
        let proxy = dir.path().join("proxy.sock");
        without_extended_desktop_size(&proxy, &srv.sock);
        proxy
    } else {
        srv.sock.clone()
    };
    let viewer = sdl_viewer(vd, &format!("unix:{}", target.display()), &shot, Some(&log));
    wait_for("first frame", Duration::from_secs(60), || shot.exists());
    assert_eq!(image::open(&shot).unwrap().into_rgb8().dimensions(), (1024, 768));
    for (w, h) in [(800, 600), (1280, 1024)] {
        x(srv.display, "xrandr", &["-s", &format!("{w}x{h}")]);
        let truth_size = (w, h);
        wait_for("the server's new size", Duration::from_secs(30), || xwd_root(srv.display).dimensions() == truth_size);
        std::thread::sleep(Duration::from_millis(500));
        let truth = xwd_root(srv.display);
        let t = Instant::now();
        let mut last = (f64::MAX, 255u8, (0, 0));
        loop {
            std::fs::remove_file(&shot).ok();
            unsafe { libc::kill(viewer.0.id() as i32, libc::SIGUSR1) };
            wait_for("screenshot", Duration::from_secs(20), || shot.exists());
            let img = image::open(&shot).unwrap().into_rgb8();
            if img.dimensions() == truth_size {
                let (mean, max) = diff(&img, &truth);
                if max == 0 {
                    break;
                }
                last = (mean, max, img.dimensions());
            } else {
                last.2 = img.dimensions();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "after resizing to {w}x{h} the viewer shows {:?}, mean error {:.3}, max {}:\n{}",
                last.2,
                last.0,
                last.1,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("desktop is 800x600") && text.contains("desktop is 1280x1024"), "{text}");
    let how = if legacy { "(server init or DesktopSize)" } else { "(ExtendedDesktopSize)" };
    assert!(text.contains(&format!("server size 1280x1024 {how}")), "{text}");
}
