//! A QEMU PC network-boots from the boot server inside the lab: QEMU's own iPXE ROM (BIOS,
//! e1000) gets an address and the script URL from our DHCP, then Debian's kernel and a test
//! initramfs over HTTP or TFTP; the serial console shows the initramfs ran with our command line.
//! The admin API's boot-stage report of the PC shows the offer and the files, with their sizes
//! on disk and the protocol. In the HTTP run a second lab host leases an address with udhcpc
//! and fetches a file with atftp: its report holds exactly those two stages, stuck after the file.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use testkit::{accel_args, busybox_initramfs, kernel, wait_for_text, KillOnDrop, Lab};

const MARKER: &str = "TEST-INITRAMFS-RAN";
const PC_MAC: &str = "52:54:00:12:34:56";

/// `GET path` on the admin API inside the lab, with curl.
fn admin_get(lab: &Lab, state: &Path, path: &str) -> Value {
    let out = lab
        .cmd("curl")
        .args(["-sf", "-H", &testkit::admin_auth(state).unwrap()])
        .arg(format!("http://127.0.0.1:7001{path}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {path} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stage_names(report: &Value) -> Vec<String> {
    report["current"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap().to_string()).collect()
}

/// The stage of the file `name` in `report`, which must be complete, over `protocol`, with the
/// size of `file` on disk.
fn assert_file(report: &Value, name: &str, protocol: &str, file: &Path) {
    let stages = report["current"].as_array().unwrap();
    let got = stages.iter().find(|s| s["stage"] == "boot_file" && s["details"]["name"] == name);
    let got = got.unwrap_or_else(|| panic!("no boot_file {name} in {report:#}"));
    let d = &got["details"];
    assert_eq!((d["protocol"].as_str(), d["complete"].as_bool()), (Some(protocol), Some(true)), "{report:#}");
    assert_eq!(d["bytes"].as_u64(), Some(std::fs::metadata(file).unwrap().len()), "{name}: {report:#}");
}

/// The PC's report: offered first (by iPXE, acknowledged), then the kernel and the initramfs
/// over `transport`; it never announced, so it is stuck after the files.
fn check_pc_report(lab: &Lab, state: &Path, transport: &str, initrd: &Path) {
    let r = admin_get(lab, state, &format!("/api/boots/{PC_MAC}"));
    let names = stage_names(&r);
    assert_eq!(names[0], "dhcp_offered", "{r:#}");
    assert!(names[1..].iter().all(|n| n == "boot_file" || n == "dhcp_offered"), "{r:#}");
    let offer = &r["current"][0]["details"];
    assert_eq!((offer["client"].as_str(), offer["acked"].as_bool()), (Some("ipxe"), Some(true)), "{r:#}");
    assert!(offer["address"].as_str().unwrap().starts_with(&lab.subnet), "{r:#}");
    assert_file(&r, "vmlinuz", transport, &kernel().unwrap());
    assert_file(&r, "initrd.img", transport, initrd);
    let ms: Vec<u64> = r["current"].as_array().unwrap().iter().map(|s| s["ms"].as_u64().unwrap()).collect();
    assert!(ms.windows(2).all(|w| w[0] <= w[1]), "stages out of order: {r:#}");
    assert_eq!((r["stuck"].as_str(), r["announced"].as_bool()), (Some("stuck after boot_file"), Some(false)), "{r:#}");
    // Not announced: listed among the boots, not among the clients.
    let boots = admin_get(lab, state, "/api/boots");
    assert!(boots.as_array().unwrap().iter().any(|b| b["mac"] == PC_MAC), "{boots:#}");
}

/// A second host: udhcpc, then atftp fetches the initramfs. Its report shows exactly that,
/// as the API's JSON and as `bootserver client MAC stages` prints it.
fn check_dhcp_and_tftp_only_host(lab: &Lab, dir: &Path, state: &Path, initrd: &Path) {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh
case \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\" ;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let st = lab.host_cmd(1, "udhcpc").args(["-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s"]).arg(&script).status().unwrap();
    assert!(st.success(), "udhcpc in host 1 failed");
    let got = dir.join("host-initrd");
    let st = lab
        .host_cmd(1, "atftp")
        .args(["-g", "-r", "initrd.img", "-l"])
        .arg(&got)
        .arg(lab.server_addr())
        .status()
        .unwrap();
    assert!(st.success(), "atftp in host 1 failed");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(initrd).unwrap());
    // `ip netns exec` mounts the host's own sysfs.
    let out = lab.host_cmd(1, "cat").arg("/sys/class/net/eth0/address").output().unwrap();
    let mac = String::from_utf8(out.stdout).unwrap();
    let mac = mac.trim();
    // The report is in memory at once; the file transfer's end is reported as it ends.
    let r = admin_get(lab, state, &format!("/api/boots/{mac}"));
    assert_eq!(stage_names(&r), ["dhcp_offered", "boot_file"], "{r:#}");
    assert_eq!(r["current"][0]["details"]["client"], "plain", "{r:#}");
    assert_file(&r, "initrd.img", "tftp", initrd);
    assert_eq!(r["stuck"], "stuck after boot_file", "{r:#}");
    let out = lab
        .cmd(env!("CARGO_BIN_EXE_bootserver"))
        .args(["client", mac, "stages", "--token-file"])
        .arg(state.join("admin.token"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bootserver client {mac} stages: {}", String::from_utf8_lossy(&out.stderr));
    println!("{table}");
    assert!(table.contains("never announced): stuck after boot_file"), "{table}");
    assert!(table.contains("initrd.img over tftp"), "{table}");
}

fn boot_once(transport: &str) {
    // The HTTP run has a second host that only does DHCP and TFTP.
    let hosts = u32::from(transport == "http");
    let lab = Lab::with_subnet(1, hosts, if transport == "http" { "10.78.0" } else { "10.79.0" }).unwrap();
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
        .args(["-device", &format!("e1000,netdev=n0,mac={PC_MAC}")])
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
    let state = dir.path().join("state");
    check_pc_report(&lab, &state, transport, &initrd);
    if hosts > 0 {
        check_dhcp_and_tftp_only_host(&lab, dir.path(), &state, &initrd);
    }
}

#[test]
fn qemu_pc_boots_over_http() {
    boot_once("http");
}

#[test]
fn qemu_pc_boots_over_tftp() {
    boot_once("tftp");
}
