//! What the PC is: CPU, memory, screen modes, and how long the boot took so far.

use std::path::Path;

/// A screen mode found in sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Mode {
    pub width: u32,
    pub height: u32,
    pub refresh_hz: Option<u32>,
}

/// `model name` of the first CPU and the number of CPUs, from `/proc/cpuinfo`.
pub(crate) fn cpu(cpuinfo: &str) -> (String, u32) {
    let mut model = None;
    let mut count = 0;
    for line in cpuinfo.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim() {
            "processor" => count += 1,
            "model name" if model.is_none() => model = Some(v.trim().to_string()),
            _ => {}
        }
    }
    (model.unwrap_or_else(|| "unknown".into()), count.max(1))
}

/// Installed RAM in bytes: the firmware's memory map (`/sys/firmware/memmap`, what the PC has)
/// when readable, else `MemTotal` (what the kernel kept after its own reservations).
pub(crate) fn ram_bytes(sys: &Path, meminfo: &str) -> u64 {
    let mut total = 0u64;
    if let Ok(entries) = std::fs::read_dir(sys.join("firmware/memmap")) {
        for e in entries.flatten() {
            let read = |n: &str| std::fs::read_to_string(e.path().join(n)).unwrap_or_default();
            if read("type").trim() != "System RAM" {
                continue;
            }
            let hex = |s: String| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
            if let (Some(start), Some(end)) = (hex(read("start")), hex(read("end"))) {
                total += end.saturating_sub(start) + 1;
            }
        }
    }
    if total > 0 {
        return total;
    }
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Parses one line of a DRM connector's `modes` (`1024x768`) or a framebuffer's `modes`
/// (`U:1024x768p-60`).
pub(crate) fn parse_mode(line: &str) -> Option<Mode> {
    let line = line.trim();
    let line = match line.split_once(':') {
        Some((_, rest)) => rest,
        None => line,
    };
    let (geometry, refresh) = match line.split_once('-') {
        Some((g, r)) => (g, r.parse().ok().filter(|r| *r > 0)),
        None => (line, None),
    };
    let (w, h) = geometry.split_once('x')?;
    let h: String = h.chars().take_while(char::is_ascii_digit).collect();
    Some(Mode { width: w.parse().ok()?, height: h.parse().ok()?, refresh_hz: refresh })
}

/// Every mode the connected screens or framebuffers offer, largest first, without repeats.
pub(crate) fn display_modes(sys: &Path) -> Vec<Mode> {
    let mut modes = Vec::new();
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(sys.join("class/drm")) {
        for e in rd.flatten() {
            let p = e.path();
            let connected = std::fs::read_to_string(p.join("status")).is_ok_and(|s| s.trim() == "connected");
            if connected {
                files.push(p.join("modes"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(sys.join("class/graphics")) {
        files.extend(rd.flatten().map(|e| e.path().join("modes")));
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(f) {
            modes.extend(text.lines().filter_map(parse_mode));
        }
    }
    modes.sort_by(|a, b| b.cmp(a));
    modes.dedup();
    modes
}

/// Milliseconds since the kernel started, from `/proc/uptime`.
pub(crate) fn uptime_ms(proc_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir.join("uptime")).ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Asks the kernel for random bytes on a thread of its own, so that the first blocking read
/// happens early. Without a hardware source, the kernel's random pool of a freshly booted PC
/// is not ready until the first reader makes it gather entropy (about a second of CPU on a slow
/// PC); that reader would otherwise be the TLS handshake with the broker, right on the boot's
/// critical path, while the wait for the link leaves the CPU idle.
pub(crate) fn warm_up_random(tx: std::sync::mpsc::Sender<super::Event>) {
    super::spawn_guarded("random", tx, |_| {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        // SAFETY: getrandom writes at most buf.len() bytes into buf.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        match n {
            n if n >= 0 => log::info!("kernel random pool ready after {} ms", started.elapsed().as_millis()),
            _ => log::warn!("getrandom: {}", std::io::Error::last_os_error()),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_count() {
        let text = "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n";
        assert_eq!(cpu(text), ("QEMU Virtual CPU version 2.5+".to_string(), 2));
    }

    #[test]
    fn memtotal_fallback() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ram_bytes(dir.path(), "MemTotal:        2048 kB\nMemFree: 1 kB\n"), 2048 * 1024);
    }

    #[test]
    fn firmware_memmap_is_summed() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (start, end, ty)) in
            [("0x0", "0x9fbff", "System RAM"), ("0x9fc00", "0x9ffff", "Reserved"), ("0x100000", "0xffdffff", "System RAM")]
                .iter()
                .enumerate()
        {
            let d = dir.path().join(format!("firmware/memmap/{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("start"), start).unwrap();
            std::fs::write(d.join("end"), end).unwrap();
            std::fs::write(d.join("type"), ty).unwrap();
        }
        assert_eq!(ram_bytes(dir.path(), ""), 0x9fc00 + 0xffe0000 - 0x100000);
    }

    #[test]
    fn modes_from_drm_and_fbdev() {
        assert_eq!(parse_mode("1024x768"), Some(Mode { width: 1024, height: 768, refresh_hz: None }));
        assert_eq!(parse_mode("U:1280x1024p-75"), Some(Mode { width: 1280, height: 1024, refresh_hz: Some(75) }));
        assert_eq!(parse_mode("S:640x480i-0"), Some(Mode { width: 640, height: 480, refresh_hz: None }));
        assert_eq!(parse_mode("garbage"), None);
    }
}
