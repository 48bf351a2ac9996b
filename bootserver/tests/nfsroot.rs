//! End to end: a QEMU PC in the lab mounts the client root (scripts/build-client-root) from our
//! NFS export with the kernel's NFSv3 client and runs the SDL2 viewer from it (dynamically
//! linked, loaded by the root's own ld.so) on KMS/DRM (bochs, `-vga std`, Mesa's software
//! rasterizer). The desktop is another QEMU, paused, whose VNC screen is stable; the PC's
//! `screendump` must equal the desktop's.
//!
//! The PC's /init is a busybox script: the test checks the NFS root and the SDL2/Mesa stack on
//! it, not the agent's boot steps.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{KillOnDrop, Lab};

const SUBNET: &str = "10.83.0";
const PC_ADDR: &str = "10.83.0.50";
/// The paused desktop's screen ("display not initialized"): the PC shows it in this mode too.
const MODE: (u32, u32) = (640, 480);

fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_bootserver")).with_file_name(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries (scripts/setup)", p.display());
    p
}

/// The client root, built (or found in the cache) by the script users run.
fn client_root() -> PathBuf {
    let out = Command::new(testkit::repo_root().join("scripts/build-client-root"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/build-client-root");
    assert!(out.status.success(), "scripts/build-client-root failed");
    let path = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(path.lines().last().expect("build-client-root prints the root's path").trim())
}

/// The modules for the NIC, the NFS client and the display, in load order, from the cached
/// kernel's own dependency data.
fn modules(variant: Variant) -> Vec<PathBuf> {
    let kroot = testkit::cache_dir().join("kernel/root");
    let ver = testkit::kernel_version().unwrap();
    let mut list: Vec<PathBuf> = Vec::new();
    let names: &[&str] = match variant {
        Variant::NfsSdl => &["e1000", "nfsv3", "bochs"],
        Variant::Fbdev => &["e1000", "bochs"],
    };
    for m in names {
        let o = Command::new("modprobe")
            .arg("-d")
            .arg(&kroot)
            .args(["-S", &ver, "--show-depends", m])
            .output()
            .expect("running modprobe --show-depends");
        assert!(o.status.success(), "modprobe --show-depends {m}: {}", String::from_utf8_lossy(&o.stderr));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(p) = line.strip_prefix("insmod ") {
                let p = PathBuf::from(p.split_whitespace().next().unwrap());
                if !list.contains(&p) {
                    list.push(p);
                }
            }
        }
    }
    list
}

/// What the PC runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The dynamically linked viewer and its SDL2/Mesa stack from the NFS root, on KMS/DRM.
    NfsSdl,
    /// A static fbdev-only viewer inside the initramfs, no NFS.
    Fbdev,
}

/// busybox's initramfs with a second newc archive (the kernel takes them concatenated) that
/// holds the modules and, for [`Variant::Fbdev`], the static viewer. `/init` prints a line with
/// `NFSROOT-` once the display driver is loaded (and, for the NFS root, mounted).
fn build_initrd(dir: &Path, server: &str, variant: Variant, static_viewer: Option<&Path>) -> PathBuf {
    let mods = modules(variant);
    let names: Vec<String> = mods.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let insmods: String = names.iter().map(|n| format!("busybox insmod /modules/{n}\n")).collect();
    let view = format!("view {server}:5901 --encoding zrle");
    // Text options go to mount(2) as they are (this busybox has no NFS helper): TCP for NFS and
    // MOUNT on the boot server's one port, no lock daemon, no portmapper round trip.
    let run = match variant {
        Variant::NfsSdl => format!(
            r#"R=/run/root
busybox mkdir -p $R
opts=vers=3,proto=tcp,mountproto=tcp,nolock,port=2049,mountport=2049,addr={server},ro
n=0
until mount -t nfs -o $opts {server}:/client $R; do
  n=$((n + 1)); [ $n -ge 30 ] && echo NFSROOT-FAILED && poweroff -f
  sleep 1
done
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mount -t tmpfs tmp $R/tmp
mount -t tmpfs run $R/run
busybox mkdir $R/run/tools
mount -t nfs -o $opts {server}:/tools $R/run/tools || {{ echo NFSROOT-FAILED; poweroff -f; }}
echo NFSROOT-MOUNTED
export HOME=/tmp SDL_VIDEODRIVER=kmsdrm MESA_SHADER_CACHE_DISABLE=true
busybox chroot $R /run/tools/thinclient {view} --presenter sdl
"#
        ),
        Variant::Fbdev => format!("echo NFSROOT-NONE\n/thinclient {view} --presenter fbdev\n"),
    };
    let init = format!(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{insmods}
ip link set lo up
ip addr add {PC_ADDR}/24 dev eth0
ip link set eth0 up
export RUST_LOG=info
{run}
echo VIEWER-EXITED $?
poweroff -f
"#
    );
    let mut extra: Vec<(String, Vec<u8>)> =
        mods.iter().zip(&names).map(|(p, n)| (format!("modules/{n}"), std::fs::read(p).unwrap())).collect();
    if let Some(v) = static_viewer {
        extra.push(("thinclient".into(), std::fs::read(v).unwrap()));
    }
    let initrd = dir.join("initrd");
    testkit::busybox_initramfs_with(&initrd, &init, &extra).unwrap();
    initrd
}

/// QEMU's screendump (binary PPM): (width, height, RGB bytes).
fn screendump(monitor: &Path, out: &Path) -> Option<(u32, u32, Vec<u8>)> {
    let _ = std::fs::remove_file(out);
    let mut m = UnixStream::connect(monitor).ok()?;
    writeln!(m, "screendump {}", out.display()).ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(d) = std::fs::read(out) {
            if let Some(img) = parse_ppm(&d) {
                return Some(img);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

fn parse_ppm(d: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while d.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while !d.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&d[s..i]).into_owned());
    }
    if fields[0] != "P6" || fields[3] != "255" {
        return None;
    }
    let (w, h): (u32, u32) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
    let px = d.get(i + 1..)?;
    (px.len() == (w * h * 3) as usize).then(|| (w, h, px.to_vec()))
}

fn wait_for_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The boot server with the client root, and the desktop, in a lab with one tap for the PC.
struct Rig {
    dir: tempfile::TempDir,
    truth: (u32, u32, Vec<u8>),
    server_log: PathBuf,
    _desktop: KillOnDrop,
    _server: KillOnDrop,
    lab: Lab,
}

impl Rig {
    fn new() -> Rig {
        let root = client_root();
        let lab = Lab::with_subnet(1, 0, SUBNET).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("tools");
        std::fs::create_dir_all(&tools).unwrap();
        std::fs::copy(sibling_bin("thinclient"), tools.join("thinclient")).unwrap();

        let log = dir.path().join("server.log");
        let d = dir.path().display();
        let args = format!(
            "serve --interface br0 --no-dhcp --no-tftp --no-http --boot-dir {d} --state-dir {d}/state \
             --nfs-export /client={} --nfs-export /tools={}",
            root.display(),
            tools.display()
        );
        let mut cmd = lab.cmd(env!("CARGO_BIN_EXE_bootserver"));
        cmd.args(args.split_whitespace()).env("RUST_LOG", "info").stderr(std::fs::File::create(&log).unwrap());
        let server = KillOnDrop::spawn(&mut cmd).unwrap();
        testkit::wait_for_text(&log, "nfs: exporting", Duration::from_secs(60)).unwrap();

        // The desktop: a paused QEMU shows a fixed screen over VNC display :1 on the bridge.
        let dmon = dir.path().join("desktop.mon");
        let desktop = KillOnDrop::spawn(
            lab.cmd("qemu-system-x86_64")
                .args(["-S", "-nodefaults", "-display", "none", "-vga", "std", "-machine", "pc,accel=tcg"])
                .args(["-vnc", &format!("{}:1", lab.server_addr())])
                .arg("-monitor")
                .arg(format!("unix:{},server,nowait", dmon.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        wait_for_socket(&dmon);
        let truth = screendump(&dmon, &dir.path().join("desktop.ppm")).expect("the desktop's screendump");
        assert_eq!((truth.0, truth.1), MODE, "the paused desktop's screen size changed");
        Rig { dir, truth, server_log: log, _desktop: desktop, _server: server, lab }
    }

    /// Powers on a PC with `initrd` and waits until its screen equals the desktop's; returns
    /// the time that took, the time /init's `NFSROOT-` line appeared, and the PC's serial log.
    /// Panics with the serial log on failure.
    fn boot(&self, initrd: &Path, timeout: Duration) -> (Duration, Duration, String) {
        let serial = self.dir.path().join("serial.log");
        let pmon = self.dir.path().join("pc.mon");
        let _ = std::fs::remove_file(&serial);
        let _ = std::fs::remove_file(&pmon);
        let mut cmd = self.lab.cmd("qemu-system-x86_64");
        cmd.args(testkit::accel_args())
            .args(["-m", "1024", "-nodefaults", "-display", "none", "-vga", "std", "-no-reboot"])
            .arg("-kernel")
            .arg(testkit::kernel().unwrap())
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &format!("console=ttyS0 panic=-1 video={}x{}", MODE.0, MODE.1)])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", "e1000,netdev=n0,mac=52:54:00:4e:46:01"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", pmon.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let mut pc = KillOnDrop::spawn(&mut cmd).unwrap();
        let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();
        wait_for_socket(&pmon);
        // Before its display driver loads, the PC's QEMU shows the very screen the paused
        // desktop shows ("display not initialized"): compare only once the driver has taken
        // over, which /init reports after loading the modules.
        let marked = testkit::wait_for_text(&serial, "NFSROOT-", timeout);
        let marked_at = t0.elapsed();
        assert!(
            marked.as_ref().is_ok_and(|t| !t.contains("NFSROOT-FAILED")),
            "the PC did not get to its viewer:\n{}\nserver log:\n{}",
            serial_text(),
            std::fs::read_to_string(&self.server_log).unwrap_or_default()
        );
        let shot = self.dir.path().join("pc.ppm");
        let mut last = None;
        loop {
            if let Some(img) = screendump(&pmon, &shot) {
                if img == self.truth {
                    break;
                }
                let differing = img.2.iter().zip(&self.truth.2).filter(|(a, b)| a != b).count();
                last = Some((img.0, img.1, differing));
            }
            let text = serial_text();
            assert!(!text.contains("VIEWER-EXITED") && !text.contains("NFSROOT-FAILED"), "the PC gave up:\n{text}");
            assert!(
                t0.elapsed() < timeout,
                "the PC's screen never matched the desktop's (last: {last:?}, width, height, differing bytes):\n{text}\nserver log:\n{}",
                std::fs::read_to_string(&self.server_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let took = t0.elapsed();
        pc.stop(Duration::from_secs(1));
        (took, marked_at, serial_text())
    }
}

#[test]
fn pc_runs_the_sdl_viewer_from_the_nfs_root() {
    let rig = Rig::new();
    let initrd = build_initrd(rig.dir.path(), &rig.lab.server_addr(), Variant::NfsSdl, None);
    // Mesa's software rasterizer under TCG is slow to draw its first frame: minutes allowed.
    let (took, _, serial) = rig.boot(&initrd, Duration::from_secs(600));
    assert!(serial.contains("NFSROOT-MOUNTED"), "{serial}");
    assert!(serial.contains("SDL video driver: KMSDRM"), "the viewer did not run SDL on KMS/DRM:\n{serial}");
    let server_log = std::fs::read_to_string(&rig.server_log).unwrap();
    assert!(server_log.contains(&format!("{PC_ADDR}:")), "no mount in the server's log:\n{server_log}");
    for l in serial.lines().filter(|l| l.contains("SDL ")) {
        eprintln!("{l}");
    }
    eprintln!("power-on to desktop: {:.1} s", took.as_secs_f64());
}

/// Power-on to desktop, NFS root with SDL2 against the static fbdev viewer in the initramfs.
/// A benchmark, not a test: `scripts/bench/nfsroot-boot` runs it with the static viewer's path
/// in `TC_STATIC_VIEWER` and ROUNDS in `TC_ROUNDS`.
#[test]
#[ignore]
fn boot_time_nfs_sdl_against_fbdev() {
    let viewer = PathBuf::from(std::env::var("TC_STATIC_VIEWER").expect("TC_STATIC_VIEWER: the static fbdev viewer"));
    let rounds: usize = std::env::var("TC_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let rig = Rig::new();
    let server = rig.lab.server_addr();
    let mut best = [f64::MAX; 2];
    let mut marks = [f64::MAX; 2];
    let mut all = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, v) in [Variant::NfsSdl, Variant::Fbdev].into_iter().enumerate() {
            let initrd = build_initrd(rig.dir.path(), &server, v, (v == Variant::Fbdev).then_some(viewer.as_path()));
            let (took, marked, _) = rig.boot(&initrd, Duration::from_secs(600));
            let secs = took.as_secs_f64();
            if secs < best[i] {
                (best[i], marks[i]) = (secs, marked.as_secs_f64());
            }
            all[i].push(format!("{secs:.1}"));
        }
    }
    println!("power-on to desktop ({} accel), QEMU start to the PC's screen equal to the desktop's", testkit::accel());
    println!("{:<34} {:>8} {:>14}  runs", "image", "best s", "viewer start s");
    println!("{:<34} {:>8.1} {:>14.1}  {}", "NFS root, SDL2 on KMS/DRM (Mesa)", best[0], marks[0], all[0].join(" "));
    println!("{:<34} {:>8.1} {:>14.1}  {}", "initramfs only, fbdev", best[1], marks[1], all[1].join(" "));
    println!("NFS+SDL2 takes {:.2}x the fbdev image's time", best[0] / best[1]);
}
