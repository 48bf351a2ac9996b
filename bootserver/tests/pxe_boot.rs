//! A QEMU PC network-boots from the boot server inside the lab: QEMU's own iPXE ROM (BIOS,
//! e1000) gets an address and the script URL from our DHCP, then Debian's kernel and a test
//! initramfs over HTTP or TFTP; the serial console shows the initramfs ran with our command line.

use std::process::Stdio;
use std::time::Duration;

use testkit::{accel_args, busybox_initramfs, kernel, wait_for_text, KillOnDrop, Lab};

const MARKER: &str = "TEST-INITRAMFS-RAN";

fn boot_once(transport: &str) {
    let lab = Lab::with_subnet(1, 0, if transport == "http" { "10.78.0" } else { "10.79.0" }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    busybox_initramfs(
        &initrd,
        &format!(
            "#!/bin/sh\nmount -t proc proc /proc\necho {MARKER}\necho \"cmdline: $(cat /proc/cmdline)\"\npoweroff -f\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("bootserver.log");
    let _server = KillOnDrop::spawn(
        lab.cmd(env!("CARGO_BIN_EXE_bootserver"))
            .arg("boot")
            .arg(kernel().unwrap())
            .arg(&initrd)
            .args(["--interface", "br0", "--transport", transport])
            .args(["--cmdline", "console=ttyS0 panic=-1"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_for_text(&log, "http: serving", Duration::from_secs(30)).unwrap();
    let serial = dir.path().join("serial.log");
    let mut qemu = lab.cmd("qemu-system-x86_64");
    qemu.args(accel_args())
        .args(["-m", "256", "-display", "none", "-boot", "n", "-no-reboot"])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", "e1000,netdev=n0,mac=52:54:00:12:34:56"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _pc = KillOnDrop::spawn(&mut qemu).unwrap();
    let text = match wait_for_text(&serial, MARKER, Duration::from_secs(600)) {
        Ok(t) => t,
        Err(e) => panic!("{e}\nboot server log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
    };
    assert!(text.contains("tc.broker=10.7"), "command line lacks the broker: {text}");
    let server_log = std::fs::read_to_string(&log).unwrap();
    let fetched = server_log
        .lines()
        .any(|l| l.contains(&format!("bootserver::{transport}")) && l.contains("initrd.img"));
    assert!(fetched, "initrd not fetched over {transport}:\n{server_log}");
}

#[test]
fn qemu_pc_boots_over_http() {
    boot_once("http");
}

#[test]
fn qemu_pc_boots_over_tftp() {
    boot_once("tftp");
}
