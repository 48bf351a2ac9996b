//! `GET /metrics`: the figures in the OpenMetrics text format that Prometheus scrapes, built
//! from the live state at each scrape (a few dozen series: cheaper than keeping them updated).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::routes::Ctx;

type Labels = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;

fn family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, GaugeF> {
    let f = Family::<Labels, GaugeF>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str, value: f64) {
    let g = GaugeF::default();
    g.set(value);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, value: &AtomicU64) {
    let c = Counter::<u64>::default();
    c.inc_by(value.load(Ordering::Relaxed));
    reg.register(name, help, c);
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// The text of one scrape.
pub async fn render(c: &Ctx) -> Result<String, String> {
    let mut reg = Registry::with_prefix("bootserver");
    let m = &c.metrics;

    // The PCs and the people at them.
    let pcs = family(&mut reg, "pcs", "PCs in the registry, by state");
    let clients = c.broker.registry.list().await.map_err(|e| e.to_string())?;
    for state in ["online", "offline", "rebooting", "powered_off"] {
        pcs.get_or_create(&label("state", state)).set(0.0);
    }
    let mut connected = 0;
    for r in &clients {
        let state = serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        pcs.get_or_create(&label("state", &state)).inc();
        connected += usize::from(c.broker.is_connected(&r.mac));
    }
    gauge(&mut reg, "pcs_connected", "PCs whose agent is connected now", connected as f64);
    gauge(&mut reg, "people_connected", "People logged in at a PC", c.broker.logins.seated() as f64);
    counter(&mut reg, "logins", "Logins that needed a new desktop, since the start", &m.logins);
    counter(&mut reg, "announces", "Kiosk PCs' announces that needed a new desktop, since the start", &m.announces);
    counter(&mut reg, "refusals", "Arrivals that got no desktop, since the start", &m.refusals);

    if let Some((orch, hosts)) = &c.desktops {
        let o = orch.overview();
        gauge(&mut reg, "desktops", "Desktop VMs in use", orch.desktops().len() as f64);
        let pool = orch.pool();
        let p = family(&mut reg, "pool_vms", "Pre-booted VMs, by whether they are ready");
        p.get_or_create(&label("ready", "true")).set(pool.iter().filter(|v| v.ready).count() as f64);
        p.get_or_create(&label("ready", "false")).set(pool.iter().filter(|v| !v.ready).count() as f64);
        gauge(&mut reg, "pool_configured", "Pre-booted VMs asked for (desktops.pool)", c.pool_configured as f64);
        gauge(&mut reg, "memory_users", "Users the memory algorithm places now (n)", o.users as f64);
        gauge(&mut reg, "memory_full", "1 when a newcomer would be refused", f64::from(u8::from(o.level.is_none())));
        if let Some(level) = o.level {
            gauge(&mut reg, "memory_level", "The level m a newcomer gets now (0 is the largest)", level as f64);
            gauge(&mut reg, "memory_level_bytes", "The memory of level m", (o.level_mib.unwrap_or(0) << 20) as f64);
        }
        if let Some(u) = o.max_users {
            gauge(&mut reg, "memory_max_users", "U_m: the users level m serves while keeping a slot free", u as f64);
        }

        let up = family(&mut reg, "host_up", "1 while the host answers its health checks");
        let cpu = family(&mut reg, "host_cpu_ratio", "Busy share of the host's CPUs over the last sample");
        let used = family(&mut reg, "host_memory_used_bytes", "Host memory in use (total minus available)");
        let total = family(&mut reg, "host_memory_total_bytes", "Host memory");
        let committed = family(&mut reg, "host_memory_committed_bytes", "Host memory promised to its VMs");
        let load = family(&mut reg, "host_load1", "The host's 1-minute load average");
        let vms = family(&mut reg, "host_vms", "VMs on the host");
        let rx = Family::<Labels, Counter<u64>>::default();
        reg.register("host_network_receive_bytes", "Bytes received by the host (all but loopback)", rx.clone());
        let tx = Family::<Labels, Counter<u64>>::default();
        reg.register("host_network_transmit_bytes", "Bytes sent by the host (all but loopback)", tx.clone());
        let latest = m.latest();
        for s in hosts.status() {
            let l = label("host", &s.name);
            up.get_or_create(&l).set(f64::from(u8::from(s.up)));
            let Some(r) = latest.get(&s.name) else { continue };
            let st = &r.stats;
            if let Some(v) = r.sample {
                cpu.get_or_create(&l).set(v[0]);
            }
            used.get_or_create(&l).set(st.memory_total_bytes.saturating_sub(st.memory_available_bytes) as f64);
            total.get_or_create(&l).set(st.memory_total_bytes as f64);
            committed.get_or_create(&l).set(st.memory_committed_bytes as f64);
            load.get_or_create(&l).set(st.load[0]);
            vms.get_or_create(&l).set(f64::from(st.vms));
            rx.get_or_create(&l).inc_by(st.net_rx_bytes);
            tx.get_or_create(&l).inc_by(st.net_tx_bytes);
        }
    }
    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The same scrape in Prometheus' classic text format (0.0.4), for scrapers and tools that do
/// not ask for OpenMetrics (promtool, older servers): there a counter's family is named with
/// its `_total`, and there is no `# EOF` or `# UNIT`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_classic_format_names_counters_with_their_total() {
        let open = "# HELP a_refusals Refusals.\n# TYPE a_refusals counter\na_refusals_total 3\n\
                    # HELP a_up Up.\n# TYPE a_up gauge\na_up{host=\"h1\"} 1\n# EOF\n";
        assert_eq!(
            super::classic(open),
            "# HELP a_refusals_total Refusals.\n# TYPE a_refusals_total counter\na_refusals_total 3\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up{host=\"h1\"} 1\n"
        );
    }
}
