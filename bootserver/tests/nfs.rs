//! The NFS export against libnfs's utilities, in a lab: a client host reads every file and
//! gets the same sha256, writes are refused, hosts outside the export's client list are
//! refused, and the server survives garbage.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use testkit::{wait_for_text, KillOnDrop, Lab};

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("running a command")
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

#[test]
fn libnfs_reads_the_export_and_cannot_write() {
    let lab = Lab::with_subnet(0, 2, "10.81.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/lib/deep/er")).unwrap();
    let mut files = Vec::new();
    for (i, size) in [0usize, 1, 4095, 65536, 1 << 20, 3 * (1 << 20) + 17].iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|j| (j as u32).wrapping_mul(2654435761 + i as u32) as u8).collect();
        let rel = format!("usr/lib/deep/er/f{i}.bin");
        std::fs::write(root.join(&rel), &data).unwrap();
        files.push((rel, sha(&data)));
    }
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("usr/out")).unwrap();

    let log = dir.path().join("server.log");
    let _server = KillOnDrop::spawn(
        lab.cmd(env!("CARGO_BIN_EXE_bootserver"))
            .args(["serve", "--interface", "br0", "--no-dhcp", "--no-tftp", "--no-http"])
            .arg("--nfs-export")
            .arg(format!("/client={}", root.display()))
            .arg("--boot-dir")
            .arg(&root)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_for_text(&log, "nfs: exporting", Duration::from_secs(30)).unwrap();
    // Host 1 is in the server's /24, host 2 is not.
    for (k, addr) in [(1, "10.81.0.2/24"), (2, "10.82.0.5/32")] {
        let mut c = lab.host_cmd(k, "ip");
        c.args(["addr", "add", addr, "dev", "eth0"]);
        assert!(run(c).status.success());
    }
    // Give host 2 a way to reach the server: same wire, an address outside the allowed subnet.
    let mut c = lab.host_cmd(2, "ip");
    c.args(["route", "add", "10.81.0.1/32", "dev", "eth0"]);
    assert!(run(c).status.success());
    let mut c = lab.cmd("ip");
    c.args(["route", "add", "10.82.0.5/32", "dev", "br0"]);
    assert!(run(c).status.success());

    let url = "nfs://10.81.0.1/client";
    for (rel, want) in &files {
        let out = dir.path().join("copy");
        let _ = std::fs::remove_file(&out);
        let mut c = lab.host_cmd(1, "nfs-cp");
        c.arg(format!("{url}/{rel}")).arg(&out);
        let o = run(c);
        assert!(o.status.success(), "nfs-cp {rel}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(&sha(&std::fs::read(&out).unwrap()), want, "{rel}");
    }

    let mut c = lab.host_cmd(1, "nfs-ls");
    c.args(["-R", &format!("{url}/")]);
    let o = run(c);
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "nfs-ls: {}", String::from_utf8_lossy(&o.stderr));
    for (rel, _) in &files {
        let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
        assert!(listing.contains(name), "{name} missing from listing:\n{listing}");
    }
    // The symlink out is listed as a link; reading through it gives nothing from outside.
    let mut c = lab.host_cmd(1, "nfs-cp");
    c.arg(format!("{url}/usr/out")).arg(dir.path().join("leak"));
    let _ = run(c);
    let leaked = std::fs::read(dir.path().join("leak")).unwrap_or_default();
    assert_ne!(leaked, b"outside", "a symlink was followed out of the export");

    // Writes are refused and nothing appears in the export.
    let local = dir.path().join("local.txt");
    std::fs::File::create(&local).unwrap().write_all(b"new").unwrap();
    let mut c = lab.host_cmd(1, "nfs-cp");
    c.arg(&local).arg(format!("{url}/new.txt"));
    assert!(!run(c).status.success(), "a write succeeded");
    assert!(!root.join("new.txt").exists());

    // Host 2 is not a client of the export.
    let mut c = lab.host_cmd(2, "nfs-ls");
    c.arg(format!("{url}/"));
    let o = run(c);
    assert!(!o.status.success(), "host outside the client list listed the export");
    let server_log = std::fs::read_to_string(&log).unwrap();
    assert!(server_log.contains("nfs: refused connection from 10.82.0.5"), "{server_log}");

    // Garbage on the NFS and portmapper ports does not stop the server.
    let mut c = lab.host_cmd(1, "bash");
    c.args(["-c", "head -c 100000 /dev/urandom > /dev/tcp/10.81.0.1/2049; head -c 500 /dev/urandom > /dev/udp/10.81.0.1/111; true"]);
    let _ = run(c);
    let mut c = lab.host_cmd(1, "nfs-ls");
    c.arg(format!("{url}/usr/lib/deep/er/"));
    let o = run(c);
    assert!(o.status.success(), "server stopped answering after garbage: {}", String::from_utf8_lossy(&o.stderr));
}
