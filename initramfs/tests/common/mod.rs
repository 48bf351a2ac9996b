//! Shared by the integration tests: paths of the cached kernel, the built binary, and Debian's
//! mkinitramfs run against the cached kernel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_initramfs");

pub fn cache() -> PathBuf {
    std::env::var_os("TC_CACHE").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
}

pub fn kernel_version() -> String {
    let f = cache().join("kernel/version");
    std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup (or set TC_CACHE)", f.display())).trim().to_string()
}

pub fn modules_dir() -> PathBuf {
    cache().join("kernel/root/lib/modules").join(kernel_version())
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

/// Runs a command, panics with its stderr unless it succeeds, returns stdout.
pub fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn initramfs(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args).env("TC_CACHE", cache()))
}

pub fn lines(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b).lines().map(String::from).collect()
}

/// Debian's mkinitramfs for the cached kernel, which is not installed on this machine: a
/// private mount namespace shows the cached module tree at /usr/lib/modules/<version> (through
/// an overlay, since the folder does not exist) and the cached /boot (for the kernel config
/// mkinitramfs reads). Nothing is left mounted or written outside `work`.
pub fn mkinitramfs(work: &Path, modules: &[&str], compress: &str, out: &Path) {
    let version = kernel_version();
    let root = cache().join("kernel/root");
    let conf = work.join("conf");
    ok(Command::new("cp").arg("-r").arg("/etc/initramfs-tools").arg(&conf));
    let c = conf.join("initramfs.conf");
    let text = std::fs::read_to_string(&c).unwrap();
    let text: String = text.lines().map(|l| if l.starts_with("MODULES=") { "MODULES=list".to_string() } else { l.to_string() }).collect::<Vec<_>>().join("\n");
    std::fs::write(&c, text + "\n").unwrap();
    std::fs::write(conf.join("modules"), modules.join("\n") + "\n").unwrap();
    for d in ["up", "ovwork"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    let script = format!(
        "set -e
mount -t overlay overlay -o lowerdir=/usr/lib,upperdir={w}/up,workdir={w}/ovwork /usr/lib
mkdir -p /usr/lib/modules/{v}
mount --bind {r}/lib/modules/{v} /usr/lib/modules/{v}
mount --bind {r}/boot /boot
mkinitramfs -d {conf} -c {compress} -o {out} {v}",
        w = work.display(),
        v = version,
        r = root.display(),
        conf = conf.display(),
        out = out.display(),
    );
    ok(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
}
