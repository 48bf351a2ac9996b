//! Chooses KVM or TCG. /dev/kvm can exist and still hang guests, so KVM is used only after a
//! short timed boot of a real kernel reaches its panic message (no root given) in time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::host::Accel;

pub(crate) async fn probe(qemu: &Path, kernel: Option<PathBuf>, secs: u64) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    let Some(kernel) = kernel else {
        return (Accel::Tcg, "no template kernel to probe KVM with".into());
    };
    let dir = match tempfile::Builder::new().prefix("kvm-probe").tempdir() {
        Ok(d) => d,
        Err(e) => return (Accel::Tcg, format!("KVM probe: temp dir: {e}")),
    };
    let log = dir.path().join("serial.log");
    let started = Instant::now();
    let child = tokio::process::Command::new(qemu)
        .args(["-accel", "kvm", "-m", "128", "-nic", "none", "-display", "none", "-no-reboot"])
        .args(["-no-user-config", "-append", "console=ttyS0 panic=-1", "-kernel"])
        .arg(&kernel)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Accel::Tcg, format!("KVM probe: cannot run {}: {e}", qemu.display())),
    };
    let waited = tokio::time::timeout(Duration::from_secs(secs), child.wait()).await;
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    match waited {
        Ok(Ok(_)) if serial.contains("Kernel panic") => {
            (Accel::Kvm, format!("KVM probe boot reached the kernel's panic in {:.1} s", started.elapsed().as_secs_f64()))
        }
        Ok(_) => (Accel::Tcg, "KVM probe boot ended without kernel output".into()),
        Err(_) => {
            let _ = child.kill().await;
            (Accel::Tcg, format!("KVM probe boot did not finish within {secs} s"))
        }
    }
}
