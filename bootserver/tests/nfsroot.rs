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
fn modules() -> Vec<PathBuf> {
    let kroot = testkit::cache_dir().join("kernel/root");
    let ver = testkit::kernel_version().unwrap();
    let mut list: Vec<PathBuf> = Vec::new();
    for m in ["e1000", "nfsv3", "bochs"] {
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

/// busybox's initramfs with a second newc archive (the kernel takes them concatenated) that
/// holds the modules.
fn build_initrd(dir: &Path, server: &str) -> PathBuf {
    let mods = modules();
    let names: Vec<String> = mods.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let insmods: String = names.iter().map(|n| format!("busybox insmod /modules/{n}\n")).collect();
    // Text options go to mount(2) as they are (this busybox has no NFS helper): TCP for NFS and
    // MOUNT on the boot server's one port, no lock daemon, no portmapper round trip.
    let init = format!(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{insmods}
ip link set lo up
ip addr add {PC_ADDR}/24 dev eth0
ip link set eth0 up
R=/run/root
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
export HOME=/tmp SDL_VIDEODRIVER=kmsdrm MESA_SHADER_CACHE_DISABLE=true RUST_LOG=info
busybox chroot $R /run/tools/thinclient view {server}:5901 --presenter sdl --encoding zrle
echo VIEWER-EXITED $?
poweroff -f
"#
    );
    let initrd = dir.join("initrd");
    testkit::busybox_initramfs(&initrd, &init).unwrap();
    let mdir = dir.join("mods");
    std::fs::create_dir_all(mdir.join("modules")).unwrap();
    for (p, n) in mods.iter().zip(&names) {
        std::fs::copy(p, mdir.join("modules").join(n)).unwrap();
    }
    let out = std::fs::OpenOptions::new().append(true).open(&initrd).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg("find modules | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0")
        .current_dir(&mdir)
        .stdout(out)
        .status()
        .unwrap();
    assert!(st.success(), "cpio of the modules failed");
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

#[test]
fn pc_runs_the_sdl_viewer_from_the_nfs_root() {
    let root = client_root();
    let lab = Lab::with_subnet(1, 0, SUBNET).unwrap();
    let server = lab.server_addr();
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::copy(sibling_bin("thinclient"), tools.join("thinclient")).unwrap();
    let initrd = build_initrd(dir.path(), &server);

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
    let _server = KillOnDrop::spawn(&mut cmd).unwrap();
    testkit::wait_for_text(&log, "nfs: exporting", Duration::from_secs(60)).unwrap();

    // The desktop: a paused QEMU shows a fixed screen over VNC display :1 on the lab's bridge.
    let dmon = dir.path().join("desktop.mon");
    let _desktop = KillOnDrop::spawn(
        lab.cmd("qemu-system-x86_64")
            .args(["-S", "-nodefaults", "-display", "none", "-vga", "std", "-machine", "pc,accel=tcg"])
            .args(["-vnc", &format!("{server}:1")])
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

    let serial = dir.path().join("serial.log");
    let pmon = dir.path().join("pc.mon");
    let mut cmd = lab.cmd("qemu-system-x86_64");
    cmd.args(testkit::accel_args())
        .args(["-m", "1024", "-nodefaults", "-display", "none", "-vga", "std", "-no-reboot"])
        .arg("-kernel")
        .arg(testkit::kernel().unwrap())
        .arg("-initrd")
        .arg(&initrd)
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
    let _pc = KillOnDrop::spawn(&mut cmd).unwrap();
    let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();
    let mounted = testkit::wait_for_text(&serial, "NFSROOT-", Duration::from_secs(300));
    assert!(
        mounted.as_ref().is_ok_and(|t| t.contains("NFSROOT-MOUNTED")),
        "the PC did not mount its NFS root:\n{}\nserver log:\n{}",
        serial_text(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains(&format!("{PC_ADDR}:")), "no mount in the server's log");

    // Mesa's software rasterizer under TCG is slow to draw its first frame: poll.
    let deadline = Instant::now() + Duration::from_secs(600);
    let shot = dir.path().join("pc.ppm");
    let mut last = None;
    loop {
        if let Some(img) = screendump(&pmon, &shot) {
            if img == truth {
                break;
            }
            last = Some((img.0, img.1, img.2.iter().zip(&truth.2).filter(|(a, b)| a != b).count()));
        }
        let text = serial_text();
        assert!(!text.contains("VIEWER-EXITED"), "the viewer exited:\n{text}");
        assert!(
            Instant::now() < deadline,
            "the PC's screen never matched the desktop's (last: {last:?}, width, height, differing bytes):\n{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
