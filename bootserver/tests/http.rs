//! The HTTP service against curl, on loopback.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use testkit::{free_port, KillOnDrop};

struct Server {
    _child: KillOnDrop,
    port: u16,
    _dir: tempfile::TempDir,
}

fn start(boot: &Path, state: &Path) -> Server {
    let port = free_port();
    let child = KillOnDrop::spawn(
        Command::new(env!("CARGO_BIN_EXE_bootserver"))
            .args(["serve", "--interface", "lo", "--address", "127.0.0.1", "--no-dhcp", "--no-broker", "--no-tftp"])
            .args(["--http-port", &port.to_string(), "--kernel", "vmlinuz", "--initrd", "initrd.img"])
            .arg("--boot-dir")
            .arg(boot)
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null()),
    )
    .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Server { _child: child, port, _dir: tempfile::tempdir().unwrap() };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("bootserver did not listen on {port}");
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    let mut body = out.stdout;
    let pos = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[pos + 1..]).into_owned();
    body.truncate(pos);
    (code, body)
}

#[test]
fn serves_files_ranges_script_and_refuses_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    let state = dir.path().join("state");
    std::fs::create_dir_all(boot.join("sub")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(boot.join("vmlinuz"), &data).unwrap();
    std::fs::write(boot.join("initrd.img"), b"initrd").unwrap();
    std::fs::write(boot.join("sub/a b.txt"), b"spaced").unwrap();
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink("../secret", boot.join("link-out")).unwrap();
    let s = start(&boot, &state);
    let base = format!("http://127.0.0.1:{}", s.port);

    let (code, body) = curl(&[&format!("{base}/vmlinuz")]);
    assert_eq!(code, "200");
    assert_eq!(Sha256::digest(&body), Sha256::digest(&data));

    let (code, body) = curl(&["-r", "1000-1999", &format!("{base}/vmlinuz")]);
    assert_eq!(code, "206");
    assert_eq!(body, &data[1000..2000]);
    let (code, body) = curl(&["-r", "-10", &format!("{base}/vmlinuz")]);
    assert_eq!(code, "206");
    assert_eq!(body, &data[data.len() - 10..]);
    let (code, _) = curl(&["-r", "5000000-", &format!("{base}/vmlinuz")]);
    assert_eq!(code, "416");

    let (code, body) = curl(&[&format!("{base}/sub/a%20b.txt")]);
    assert_eq!((code.as_str(), body.as_slice()), ("200", &b"spaced"[..]));

    let (code, body) = curl(&[&format!("{base}/boot.ipxe?mac=52:54:00:aa:bb:cc")]);
    assert_eq!(code, "200");
    let script = String::from_utf8(body).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains(&format!("kernel {base}/vmlinuz initrd=initrd.img tc.broker=127.0.0.1:7000")), "{script}");
    assert!(script.contains(&format!("initrd {base}/initrd.img")), "{script}");

    for hostile in ["/../secret", "/sub/../../secret", "/%2e%2e/secret", "/link-out", "/sub%00x", "//etc/passwd"] {
        let (code, body) = curl(&[&format!("{base}{hostile}")]);
        assert!(code == "403" || code == "404" || code == "400", "{hostile}: {code}");
        assert_ne!(body, b"secret", "{hostile} leaked the file");
    }
    let (code, _) = curl(&["-X", "PUT", "-d", "x", &format!("{base}/new")]);
    assert_eq!(code, "405");
    assert!(!boot.join("new").exists());
    // Still serving after all that.
    let (code, _) = curl(&["-I", &format!("{base}/initrd.img")]);
    assert_eq!(code, "200");
}
