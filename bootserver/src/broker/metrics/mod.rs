//! The figures behind the admin console: each host's load sampled into SQLite archives, the
//! arrivals and desktops in use for the pool analysis, and the same figures for Prometheus.
//!
//! ```toml
//! [metrics]
//! sample_secs = 10                 # every host is asked GET /v1/stats this often
//! file = "metrics.sqlite"          # the time series and arrivals (in state_dir)
//! pool_refill_secs = 120           # the analysis: a pool VM is replaced this long after use
//! ```

pub mod analysis;
pub mod prom;
pub mod rollup;
pub mod routes;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::host::HostStats;
use serde::Deserialize;

use super::hosts::HostRegistry;
use super::orchestrator::Orchestrator;
use rollup::{Sample, Values};
use store::{Arrival, MetricsStore};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub sample_secs: u64,
    /// Relative paths are taken inside the boot server's `state_dir`.
    pub file: PathBuf,
    pub pool_refill_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { sample_secs: 10, file: PathBuf::from("metrics.sqlite"), pool_refill_secs: 120 }
    }
}

impl MetricsConfig {
    pub fn validate(self) -> Result<Self, String> {
        if self.sample_secs == 0 || self.sample_secs > 3600 {
            return Err(format!("sample_secs must be 1 to 3600, not {}", self.sample_secs));
        }
        if self.pool_refill_secs == 0 {
            return Err("pool_refill_secs must be at least 1".into());
        }
        Ok(self)
    }
}

/// A host's last reading, kept for the next rate and for `/metrics`.
#[derive(Debug, Clone)]
pub struct Latest {
    pub stats: HostStats,
    pub at: Instant,
    /// The last sample made from two readings, if there was one yet.
    pub sample: Option<Values>,
}

/// The sample between two readings `secs` apart: CPU as a fraction of all CPUs' time, network
/// in bytes per second. `None` when a counter went back (the host restarted) or no time passed.
pub fn sample_values(prev: &HostStats, cur: &HostStats, secs: f64) -> Option<Values> {
    let ticks = cur.cpu_ticks.checked_sub(prev.cpu_ticks)?;
    let idle = cur.cpu_idle_ticks.checked_sub(prev.cpu_idle_ticks)?;
    let rx = cur.net_rx_bytes.checked_sub(prev.net_rx_bytes)?;
    let tx = cur.net_tx_bytes.checked_sub(prev.net_tx_bytes)?;
    if secs <= 0.0 || idle > ticks {
        return None;
    }
    let cpu = if ticks == 0 { 0.0 } else { (ticks - idle) as f64 / ticks as f64 };
    let used = cur.memory_total_bytes.saturating_sub(cur.memory_available_bytes);
    Some([
        cpu,
        used as f64,
        cur.memory_total_bytes as f64,
        cur.memory_committed_bytes as f64,
        cur.load[0],
        f64::from(cur.vms),
        rx as f64 / secs,
        tx as f64 / secs,
    ])
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The store, the hosts' last readings and the counters since start.
pub struct Metrics {
    pub cfg: MetricsConfig,
    pub store: MetricsStore,
    latest: Mutex<HashMap<String, Latest>>,
    pub logins: AtomicU64,
    pub announces: AtomicU64,
    pub refusals: AtomicU64,
}

impl Metrics {
    pub fn open(cfg: MetricsConfig, state_dir: &Path) -> anyhow::Result<Arc<Metrics>> {
        let path = state_dir.join(&cfg.file);
        let store = MetricsStore::open(&path)?;
        Ok(Arc::new(Metrics {
            cfg,
            store,
            latest: Mutex::default(),
            logins: AtomicU64::new(0),
            announces: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }))
    }

    /// Someone arrived who needed a desktop they did not have: a person's login or a kiosk
    /// PC's announce; `refused` when they got none.
    pub fn arrival(&self, login: bool, refused: bool) {
        let counter = if login { &self.logins } else { &self.announces };
        counter.fetch_add(1, Ordering::Relaxed);
        if refused {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.store.add_arrival(Arrival { t: unix_now(), login, refused }) {
            log::warn!("metrics: recording an arrival: {e}");
        }
    }

    pub fn latest(&self) -> HashMap<String, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One round: every host's reading, the desktops in use, then the archives' upkeep.
    pub async fn sample_once(&self, hosts: &HostRegistry, orch: &Orchestrator) {
        let names: Vec<String> = hosts.capacities().into_iter().map(|(n, _, _)| n).collect();
        let timeout = Duration::from_secs(self.cfg.sample_secs.clamp(2, 10));
        let readings = futures_util::future::join_all(names.iter().map(|n| async move {
            match hosts.client(n) {
                Some(c) => Some(c.stats(timeout).await),
                None => None,
            }
        }))
        .await;
        let now = unix_now();
        for (name, reading) in names.iter().zip(readings) {
            let stats = match reading {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    log::debug!("metrics: {e}");
                    continue;
                }
                None => continue,
            };
            let at = Instant::now();
            let sample = {
                let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
                let sample = latest
                    .get(name)
                    .and_then(|p| sample_values(&p.stats, &stats, at.duration_since(p.at).as_secs_f64()));
                latest.insert(name.clone(), Latest { stats, at, sample });
                sample
            };
            // The first reading of a host only starts its counters.
            if let Some(v) = sample {
                if let Err(e) = self.store.add_sample(name, &Sample { t: now, v }) {
                    log::warn!("metrics: {e}");
                }
            }
        }
        if let Err(e) = self.store.add_active(now, orch.desktops().len() as i64) {
            log::warn!("metrics: {e}");
        }
        if let Err(e) = self.store.roll_up(now) {
            log::warn!("metrics: {e}");
        }
    }

    /// Samples every `sample_secs` until the task is dropped.
    pub async fn run(self: Arc<Self>, hosts: Arc<HostRegistry>, orch: Arc<Orchestrator>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.sample_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample_once(&hosts, &orch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_the_rate_between_two_readings() {
        let a = HostStats {
            cpus: 2,
            cpu_ticks: 1000,
            cpu_idle_ticks: 800,
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 6 << 30,
            memory_committed_bytes: 1 << 30,
            load: [0.5, 0.4, 0.3],
            vms: 1,
            net_rx_bytes: 10_000,
            net_tx_bytes: 5_000,
        };
        let b = HostStats { cpu_ticks: 2000, cpu_idle_ticks: 1550, net_rx_bytes: 30_000, net_tx_bytes: 5_500, ..a.clone() };
        let v = sample_values(&a, &b, 10.0).unwrap();
        assert_eq!(v, [0.25, (2u64 << 30) as f64, (8u64 << 30) as f64, (1u64 << 30) as f64, 0.5, 1.0, 2000.0, 50.0]);
        // A restarted host's counters start again: no rate from that pair.
        let reboot = HostStats { cpu_ticks: 10, cpu_idle_ticks: 5, ..a.clone() };
        assert_eq!(sample_values(&a, &reboot, 10.0), None);
        assert_eq!(sample_values(&a, &b, 0.0), None);
        assert_eq!(sample_values(&a, &a, 10.0).unwrap()[0], 0.0);
    }

    #[test]
    fn the_config_refuses_nonsense() {
        assert!(MetricsConfig { sample_secs: 0, ..Default::default() }.validate().is_err());
        assert!(MetricsConfig::default().validate().is_ok());
        let c: MetricsConfig = toml::from_str("sample_secs = 1").unwrap();
        assert_eq!(c.pool_refill_secs, 120);
        assert!(toml::from_str::<MetricsConfig>("samples = 1").is_err());
    }
}
