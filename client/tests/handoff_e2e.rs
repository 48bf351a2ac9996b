//! Hard handoff end to end in the lab, through `scripts/demo --pcs 3 --hold` with this build's
//! binaries: three QEMU PCs network-boot one after another into the agent; the host has 512 MiB
//! for desktops and the levels are 256/128 MiB, so the third arrival makes the broker hand user
//! 1 off from a 256 MiB VM to a 128 MiB one under PC 1's live viewer.
//!
//! The desktops are the "workstation" template (X, twm, xterm, xclock), from a pre-booted pool.
//! The demo itself waits for each PC's screen (QMP `screendump`) to equal its VM's, types a note
//! into user 1's home folder (the data disk) on PC 1's keyboard before the handoff (read back
//! through the VM's serial console), and after it types `cat` of it on PC 1 until PC 1's screen
//! shows the output and equals the new VM's, reads it in the new VM's serial console, and fails
//! if PC 1's viewer ever connected twice. This test then checks
//! what the demo left behind (the admin API's JSON, the screens) on its own, and, while the
//! demo holds the lab up, looks into it: the note through the new VM's console, and the proxy
//! with a token for PC 2's desktop from the admin API (it must show PC 2's VM, pixel for pixel,
//! and not user 1's) and with a made-up token (refused), both over VeNCrypt X509Plain checked
//! against the demo's CA, with VNC authentication refused.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use viewer_support::read_ppm;

mod viewer_support;

const USER1: &str = "52:54:00:de:30:01";

/// The running demo; dropping it closes its standard input, so it stops what it started and
/// deletes the lab, and waits for that (a demo that does not finish in time gets SIGTERM,
/// whose trap cleans up the same way).
struct HeldDemo {
    child: Child,
}

impl Drop for HeldDemo {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(180) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: kill(2) on the demo this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `img` without the clock in the top right corner (xclock at 160x160-20+40 and its title bar),
/// which ticks every second: the rest of a desktop nobody types into stays as it was.
fn without_clock(mut img: image::RgbImage) -> image::RgbImage {
    let w = img.width();
    for y in 0..img.height().min(240) {
        for x in w.saturating_sub(220)..w {
            img.put_pixel(x, y, image::Rgb([0, 0, 0]));
        }
    }
    img
}

/// The MiB in use and the size of `vm`'s guest, from the demo's line about it.
fn memory_line(stdout: &str, vm: &str) -> Option<(u64, u64)> {
    let rest = stdout.lines().find_map(|l| l.strip_prefix(&format!("demo: memory in use in {vm}: ")))?;
    let mut f = rest.split_whitespace();
    let used = f.next()?.parse().ok()?;
    (f.next()? == "of").then_some(())?;
    Some((used, f.next()?.parse().ok()?))
}

/// What a viewer sees through the proxy with `token`: the first full frame, as RGB, with Raw
/// encoding only, so that it can be compared with the VM's own screen exactly. The connection
/// is made from a thread inside the lab's network namespace, where the proxy listens.
fn view_through_proxy(lab: &str, proxy: &str, token: &str, ca: &Path) -> Result<image::RgbImage, String> {
    let (lab, proxy, token) = (lab.to_string(), proxy.to_string(), token.to_string());
    let tls = proto::tls::client_config(ca).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{lab}")).map_err(|e| format!("lab {lab}: {e}"))?;
        // SAFETY: setns(2) moves only this thread, which owns its runtime and sockets.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns into {lab}: {}", std::io::Error::last_os_error()));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), first_frame(&proxy, &token, tls)).await })
            .map_err(|_| "no full frame within 300 s".to_string())?
    })
    .join()
    .expect("viewer thread")
}

async fn first_frame(
    proxy: &str,
    token: &str,
    tls: std::sync::Arc<proto::tls::rustls::ClientConfig>,
) -> Result<image::RgbImage, String> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.map_err(|e| format!("connect {proxy}: {e}"))?;
    let ip: std::net::SocketAddr = proxy.parse().map_err(|e| format!("{proxy}: {e}"))?;
    let password = token.to_string();
    let client = vnc::VncConnector::new(tcp)
        .set_auth_method(async move { Ok(password) })
        .set_vencrypt(vnc::VencryptConfig { tls, server_name: proto::tls::server_name(ip.ip()) })
        .allow_vnc_auth(false)
        .add_encoding(vnc::VncEncoding::Raw)
        .allow_shared(true)
        .set_pixel_format(vnc::PixelFormat::bgra())
        .build()
        .map_err(|e| e.to_string())?
        .try_start()
        .await
        .map_err(|e| format!("RFB handshake: {e}"))?
        .finish()
        .map_err(|e| e.to_string())?;
    let (mut width, mut height, mut bgra) = (0usize, 0usize, Vec::new());
    let mut updates = 0;
    loop {
        let size = match client.recv_event().await.map_err(|e| e.to_string())? {
            vnc::VncEvent::SetResolution(s) => Some((s.width as usize, s.height as usize)),
            vnc::VncEvent::DesktopUpdate(u) => u.layout.map(|l| (l.width as usize, l.height as usize)),
            vnc::VncEvent::RawImage(r, data) => {
                let (x, y, w) = (r.x as usize, r.y as usize, r.width as usize);
                for row in 0..r.height as usize {
                    let dst = ((y + row) * width + x) * 4;
                    if dst + w * 4 <= bgra.len() && (row + 1) * w * 4 <= data.len() {
                        bgra[dst..dst + w * 4].copy_from_slice(&data[row * w * 4..(row + 1) * w * 4]);
                    }
                }
                None
            }
            // The first update answers the engine's own full request; a second full one makes
            // sure nothing of the screen was left out.
            vnc::VncEvent::UpdateEnd if width > 0 => {
                updates += 1;
                if updates == 2 {
                    break;
                }
                client.input(vnc::X11Event::FullRefresh).await.map_err(|e| e.to_string())?;
                None
            }
            vnc::VncEvent::Error(e) => return Err(e),
            _ => None,
        };
        if let Some((w, h)) = size {
            if (w, h) != (width, height) {
                (width, height) = (w, h);
                bgra = vec![0; width * height * 4];
            }
        }
    }
    let _ = client.close().await;
    let rgb = bgra.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    image::RgbImage::from_raw(width as u32, height as u32, rgb).ok_or_else(|| "no frame".to_string())
}

/// Runs the demo until it holds the lab; returns it and its output so far.
fn start_held_demo(out: &Path, work: &Path, t0: Instant) -> (HeldDemo, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_thinclient")).parent().unwrap().to_path_buf();
    for b in ["bootserver", "server-host", "initramfs"] {
        assert!(bin.join(b).exists(), "{} is missing: build the workspace binaries", bin.join(b).display());
    }
    // The static agent without SDL, as the image needs it (scripts/setup builds it).
    let client = testkit::repo_root().join("target/x86_64-unknown-linux-gnu/release/thinclient");
    assert!(client.exists(), "{} is missing: run scripts/build-client (scripts/setup does)", client.display());
    let mut child = Command::new(testkit::repo_root().join("scripts/demo"))
        .args(["--pcs", "3", "--hold", "--keep"])
        .arg(work)
        .env("DEMO_BIN_DIR", &bin)
        .env("DEMO_CLIENT", &client)
        .env("DEMO_OUT", out)
        .env("DEMO_TIMEOUT", "2400")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting scripts/demo");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let demo = HeldDemo { child };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[{:6.1} s] {line}", t0.elapsed().as_secs_f64());
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut seen = Vec::new();
    loop {
        match lines.recv() {
            Ok(line) if line.contains("holding the lab") => return (demo, seen.join("\n")),
            Ok(line) => seen.push(line),
            Err(_) => {
                drop(demo);
                let log = |n: &str| std::fs::read_to_string(work.join(n)).unwrap_or_default();
                let tail = |s: String| s.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect::<String>();
                panic!(
                    "demo ended before holding the lab:\n{}\nstderr:\n{}\nbootserver:\n{}\nPC 1 serial:\n{}",
                    seen.join("\n"),
                    err_log.join().unwrap_or_default(),
                    tail(log("bootserver.log")),
                    tail(log("pc-serial.log"))
                );
            }
        }
    }
}

#[test]
fn third_pc_hands_the_first_user_off_under_its_live_viewer() {
    let out = tempfile::tempdir().unwrap();
    let work: PathBuf = out.path().join("work");
    let t0 = Instant::now();
    let (demo, stdout) = start_held_demo(out.path(), &work, t0);
    eprintln!("the demo reached the handed-off desktop in {:.1} s", t0.elapsed().as_secs_f64());
    eprintln!("{stdout}");
    for want in [
        "its screen equals the VM's",
        "the pool's VM",
        "wrote /data/demo-note on user 1's data disk, typed on PC 1's keyboard",
        "user 1 handed off",
        "PC 1 shows the new VM",
        "typed 'cat ~/demo-note' on PC 1's keyboard",
        "/data/demo-note in",
        "still on its first connection",
        // tcpdump on the lab's bridge for the whole run: no token or agent message in clear.
        "none of the 5 secrets in clear",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let env: HashMap<String, String> = std::fs::read_to_string(out.path().join("lab.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let get = |k: &str| env.get(k).unwrap_or_else(|| panic!("lab.env has no {k}: {env:?}")).clone();
    let (first_vm, new_vm, vm2) = (get("first_vm"), get("pc1.vm"), get("pc2.vm"));
    assert_ne!(first_vm, new_vm, "user 1 was not handed off");

    // The admin API as the demo saved it: user 1 on a new 128 MiB VM, three users in all.
    let vms = read_json(&out.path().join("vms.json"));
    let vms = vms.as_array().unwrap();
    assert_eq!(vms.len(), 3, "{vms:?}");
    let user1 = vms.iter().find(|d| d["user"] == USER1).expect("user 1 has a VM");
    assert_eq!(user1["vm"], new_vm.as_str());
    assert_eq!(user1["memory_mib"], 128);
    // The workstation runs in 128 MiB, with room to spare.
    let (used, total) = memory_line(&stdout, &new_vm).unwrap_or_else(|| panic!("no memory of {new_vm} in:\n{stdout}"));
    eprintln!("the workstation in 128 MiB: {used} of {total} MiB in use");
    assert!(total <= 128 && used * 4 < total * 3, "{used} of {total} MiB in use in {new_vm}");
    let decisions = read_json(&out.path().join("decisions.json"));
    let handoff = decisions.as_array().unwrap().iter().find_map(|r| {
        let actions = r["decision"]["actions"].as_array()?;
        let i = actions.iter().position(|a| a["action"] == "handoff" && a["user"] == USER1)?;
        Some((r, i))
    });
    let (record, i) = handoff.unwrap_or_else(|| panic!("no handoff of user 1 in {decisions:#}"));
    assert!(record["steps"].as_array().unwrap().iter().all(|s| s["ok"] == true), "{record:#}");
    assert_eq!(record["steps"][i]["detail"]["viewer_connected"], true, "{record:#}");
    let sessions = read_json(&out.path().join("sessions.json"));
    let s1 = sessions.as_array().unwrap().iter().find(|s| s["label"] == USER1).expect("user 1's session");
    assert_eq!((&s1["viewer_connected"], &s1["viewer_connections"]), (&true.into(), &1.into()), "{sessions:#}");

    // PC 1's screen after the handoff is the new VM's.
    let (pc, vm) = (out.path().join("pc-after-handoff.ppm"), out.path().join("vm-after-handoff.ppm"));
    let st = Command::new(testkit::repo_root().join("scripts/screen")).arg("same").arg(&pc).arg(&vm).status().unwrap();
    assert!(st.success(), "PC 1's screen after the handoff differs from the new VM's");
    assert_eq!(read_ppm(&pc).dimensions(), (1280, 800));
    // The same check tells people apart: PC 1 does not show user 2's desktop (pixel for pixel:
    // the colour-bar desktops of two people differ by one grey level on 0.4% of the screen).
    let other = out.path().join("vm-pc2.ppm");
    let st = Command::new(testkit::repo_root().join("scripts/screen")).arg("same").arg(&pc).arg(&other).status().unwrap();
    assert!(!st.success(), "the screen check took user 2's desktop for user 1's");

    // The note, read once more through the new VM's serial console.
    let console = work.join("server-host/vms").join(&new_vm).join("console.sock");
    let note = Command::new(testkit::repo_root().join("scripts/lab-probe"))
        .arg("console")
        .arg(&console)
        .arg("cat /data/demo-note")
        .output()
        .unwrap();
    assert!(note.status.success(), "{}", String::from_utf8_lossy(&note.stderr));
    assert_eq!(String::from_utf8_lossy(&note.stdout).lines().last(), Some(get("note").as_str()));

    // A token opens its own VM and nothing else.
    let (lab, proxy) = (get("lab"), get("proxy"));
    let ca = work.join("bootserver/ca/ca.pem");
    let seen2 = view_through_proxy(&lab, &proxy, &get("pc2.token"), &ca).expect("viewing with PC 2's token");
    let want2 = without_clock(read_ppm(&out.path().join("vm-pc2.ppm")));
    let user1_screen = without_clock(read_ppm(&out.path().join("vm-pc1.ppm")));
    assert_eq!(seen2.dimensions(), want2.dimensions());
    let seen2 = without_clock(seen2);
    assert!(seen2 == want2, "PC 2's token does not show PC 2's VM {vm2}");
    // User 1's terminal holds the typed note and its `cat`; PC 2's is untouched.
    assert!(seen2 != user1_screen, "PC 2's token shows user 1's screen");
    let refused = view_through_proxy(&lab, &proxy, "made-up-token", &ca);
    assert!(refused.is_err(), "a made-up token was let in");
    eprintln!("made-up token: {}", refused.err().unwrap());
    drop(demo);
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
