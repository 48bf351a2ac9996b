//! An image built from a config boots Debian's kernel under QEMU: its /init runs and loads the
//! modules the config asked for. The same config builds byte-identical images, and `cpio -t`
//! and `lsinitramfs` list what we list.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
echo "TC-INIT-RAN $(/bin/busybox uname -r)"
for m in e1000 virtio_net bochs; do
  if /bin/busybox modprobe "$m"; then echo "TC-MODULE-OK $m"; else echo "TC-MODULE-FAIL $m"; fi
done
/bin/busybox cat /proc/modules | /bin/busybox sed 's/^/TC-LOADED /'
/bin/busybox poweroff -f
"#;

fn write_config(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("init.sh"), INIT).unwrap();
    let cfg = dir.join("image.toml");
    std::fs::write(
        &cfg,
        r#"compression = "gzip"
init = "init.sh"
binaries = ["/bin/busybox"]

[modules]
names = ["e1000", "virtio_net", "bochs"]

[[dirs]]
path = "/proc"
[[dirs]]
path = "/sys"

[[devices]]
path = "/dev/console"
kind = "char"
major = 5
minor = 1
"#,
    )
    .unwrap();
    cfg
}

/// Runs QEMU with the serial console captured; kills it (by its own handle) after `limit`.
fn boot(kernel: &Path, initrd: &Path, limit: Duration) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup installs it)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.join().unwrap()
}

#[test]
fn built_image_boots_and_loads_its_modules() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let out = initramfs(&["build", "--config", cfg.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Host metadata must not leak in: touch an input, build again, same bytes.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(dir.path().join("init.sh"), INIT).unwrap();
    let out = initramfs(&["build", "--config", cfg.to_str().unwrap(), "--out", b.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two builds differ");

    let ours = lines(&initramfs(&["list", a.to_str().unwrap()]).stdout);
    let cpio = lines(&ok(Command::new("sh").arg("-c").arg(format!("gzip -dc {} | cpio -t --quiet", a.display()))));
    let lsinitramfs = lines(&ok(Command::new("lsinitramfs").arg(&a)));
    assert_eq!(ours, cpio);
    assert_eq!(ours, lsinitramfs);
    let version = kernel_version();
    for m in ["e1000/e1000.ko", "virtio_net.ko", "failover.ko", "tiny/bochs.ko", "drm.ko"] {
        assert!(ours.iter().any(|l| l.starts_with(&format!("lib/modules/{version}/")) && l.ends_with(m)), "{m} in image");
    }
    let v = initramfs(&["verify", a.to_str().unwrap()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    // verify catches what breaks a boot: a module of another kernel, a missing dependency,
    // a missing library.
    let broken = dir.path().join("broken.img");
    let drm = ours.iter().find(|l| l.ends_with("/drm.ko")).unwrap().clone();
    let e1000 = cache().join("kernel/root").join(ours.iter().find(|l| l.ends_with("/e1000.ko")).unwrap());
    let step = |args: &[&str]| {
        let o = initramfs(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    step(&["remove", a.to_str().unwrap(), &drm, "--out", broken.to_str().unwrap()]);
    step(&["add", broken.to_str().unwrap(), "lib/modules/9.9.9-other/e1000.ko", "--from", e1000.to_str().unwrap()]);
    step(&["add", broken.to_str().unwrap(), "usr/bin/dyn", "--from", "/bin/true"]);
    let v = initramfs(&["verify", broken.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(report.contains("depends on drm"), "{report}");
    assert!(report.contains(&format!("built for kernel {version}, but sits under lib/modules/9.9.9-other")), "{report}");
    assert!(report.contains("/usr/bin/dyn: needs libc.so.6"), "{report}");

    let serial = boot(&cache().join("kernel/vmlinuz"), &a, Duration::from_secs(180));
    assert!(serial.contains(&format!("TC-INIT-RAN {version}")), "/init did not run; serial:\n{serial}");
    for m in ["e1000", "virtio_net", "bochs"] {
        assert!(serial.contains(&format!("TC-MODULE-OK {m}")), "{m} not loaded; serial:\n{serial}");
        assert!(serial.contains(&format!("TC-LOADED {m} ")), "{m} not in /proc/modules; serial:\n{serial}");
    }
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("init.sh"), INIT).unwrap();
    let cfg = dir.path().join("bad.toml");
    let out_img = dir.path().join("x.img");
    for (text, key) in [
        ("init = \"init.sh\"\n[modules]\nnames = [\"no_such_module_xyz\"]\n", "modules.names"),
        ("init = \"init.sh\"\ncompression = \"rar\"\n", "compression"),
        ("init = \"missing\"\n", "init"),
        ("init = \"init.sh\"\n[kernel]\nmodules_dir = \"/nonexistent\"\n[modules]\nnames = [\"e1000\"]\n", "kernel.modules_dir"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = initramfs(&["build", "--config", cfg.to_str().unwrap(), "--out", out_img.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(err.contains(key), "{key} not named in: {err}");
        assert!(!out_img.exists());
    }
}
