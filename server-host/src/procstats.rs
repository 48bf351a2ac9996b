//! The host's load from `/proc`, for `GET /v1/stats`. The parsers take the files' text so that
//! they are tested on captured contents; a line they do not understand is skipped.

use proto::host::HostStats;

/// (all ticks, idle + iowait ticks) from `/proc/stat`'s aggregate `cpu` line.
pub fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    let total = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// (MemTotal, MemAvailable) in bytes from `/proc/meminfo`.
pub fn memory(meminfo: &str) -> (u64, u64) {
    let get = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

/// The three load averages from `/proc/loadavg`.
pub fn load(loadavg: &str) -> [f64; 3] {
    let mut f = loadavg.split_whitespace().map(|x| x.parse::<f64>().ok().filter(|v| v.is_finite()).unwrap_or(0.0));
    [f.next().unwrap_or(0.0), f.next().unwrap_or(0.0), f.next().unwrap_or(0.0)]
}

/// (received, sent) bytes over every interface but loopback, from `/proc/net/dev`.
pub fn net_bytes(dev: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in dev.lines() {
        let Some((name, rest)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().map_while(|x| x.parse().ok()).collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

/// Reads the files now; `vms` and `committed_bytes` come from the VM store.
pub fn read(vms: u32, committed_bytes: u64) -> HostStats {
    let file = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (cpu_ticks, cpu_idle_ticks) = cpu_ticks(&file("/proc/stat")).unwrap_or((0, 0));
    let (memory_total_bytes, memory_available_bytes) = memory(&file("/proc/meminfo"));
    let (net_rx_bytes, net_tx_bytes) = net_bytes(&file("/proc/net/dev"));
    HostStats {
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        cpu_ticks,
        cpu_idle_ticks,
        memory_total_bytes,
        memory_available_bytes,
        memory_committed_bytes: committed_bytes,
        load: load(&file("/proc/loadavg")),
        vms,
        net_rx_bytes,
        net_tx_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_as_linux_writes_them() {
        let stat = "cpu  4705 356 584 3699 23 23 0 0 7 0\ncpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\nintr 1\n";
        assert_eq!(cpu_ticks(stat), Some((4705 + 356 + 584 + 3699 + 23 + 23, 3699 + 23)));
        assert_eq!(cpu_ticks("cpu0 1 2 3 4\n"), None);
        assert_eq!(cpu_ticks("cpu x y\n"), None);
        let mem = "MemTotal:       16303428 kB\nMemFree:         1234 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(memory(mem), (16303428 * 1024, 12000000 * 1024));
        assert_eq!(memory("garbage"), (0, 0));
        assert_eq!(load("0.52 0.58 0.59 1/467 12345\n"), [0.52, 0.58, 0.59]);
        assert_eq!(load("nan"), [0.0, 0.0, 0.0]);
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n  eth0: 500 5 0 0 0 0 0 0 700 7 0 0 0 0 0 0\n  tap1: 20 1 0 0 0 0 0 0 30 1 0 0 0 0 0 0\n";
        assert_eq!(net_bytes(dev), (520, 730));
        assert_eq!(net_bytes("eth0: 1 2\n"), (0, 0));
    }
}
