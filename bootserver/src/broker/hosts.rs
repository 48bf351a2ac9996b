//! The virtualization hosts: a client for each `server-host` API (see `proto::host`), and the
//! registry that health-checks them and reports a host that stops answering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use proto::host::{self, ApiError, CreateVm, CreatedVm, HostFacts, StopVm, VmInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::settings::HostConfig;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host {host}: {method} {path}: {source}")]
    Transport { host: String, method: &'static str, path: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("host {host}: {method} {path}: HTTP {status}: {message}")]
    Status { host: String, method: &'static str, path: String, status: u16, message: String },
    #[error("host {host}: {method} {path}: no answer within {timeout:?}")]
    Timeout { host: String, method: &'static str, path: String, timeout: Duration },
    #[error("host {host}: {method} {path}: unexpected answer: {detail}")]
    Decode { host: String, method: &'static str, path: String, detail: String },
}

/// One `server-host`'s API.
#[derive(Clone)]
pub struct HostClient {
    pub name: String,
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl HostClient {
    pub fn new(name: &str, url: &str, token: &str) -> Self {
        let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let base = format!("{}{}", url.trim_end_matches('/'), host::API_PREFIX);
        HostClient { name: name.to_string(), base, token: token.to_string(), http }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, HostError> {
        let (host, p) = (self.name.clone(), path.to_string());
        let transport = |e: Box<dyn std::error::Error + Send + Sync>| HostError::Transport {
            host: host.clone(),
            method,
            path: p.clone(),
            source: e,
        };
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| transport(e.into()))?,
            None => Vec::new(),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| transport(e.into()))?;
        let work = async {
            let resp = self.http.request(req).await.map_err(|e| transport(e.into()))?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.map_err(|e| transport(e.into()))?.to_bytes();
            Ok::<_, HostError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| HostError::Timeout { host: host.clone(), method, path: p.clone(), timeout })??;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(HostError::Status { host, method, path: p, status, message });
        }
        let bytes = if bytes.is_empty() { Bytes::from_static(b"null") } else { bytes };
        serde_json::from_slice(&bytes).map_err(|e| HostError::Decode { host, method, path: p, detail: e.to_string() })
    }

    pub async fn facts(&self, timeout: Duration) -> Result<HostFacts, HostError> {
        self.call("GET", "/host", None::<&()>, timeout).await
    }

    pub async fn vms(&self) -> Result<Vec<VmInfo>, HostError> {
        self.call("GET", "/vms", None::<&()>, Duration::from_secs(30)).await
    }

    /// Creates a VM; QEMU starting can take a while on a busy host.
    pub async fn create(&self, req: &CreateVm) -> Result<CreatedVm, HostError> {
        self.call("POST", "/vms", Some(req), Duration::from_secs(300)).await
    }

    pub async fn stop(&self, vm: &str, deadline_secs: u64) -> Result<host::Event, HostError> {
        let req = StopVm { deadline_secs: Some(deadline_secs) };
        self.call("POST", &format!("/vms/{vm}/stop"), Some(&req), Duration::from_secs(deadline_secs + 60)).await
    }

    /// Gives a pool VM to a user (its data disk and its name on the guest's screen).
    pub async fn assign(&self, vm: &str, user: &str) -> Result<VmInfo, HostError> {
        let req = host::AssignVm { user: user.to_string() };
        // The host waits up to a minute for a guest still booting.
        self.call("POST", &format!("/vms/{vm}/assign"), Some(&req), Duration::from_secs(120)).await
    }

    pub async fn balloon(&self, vm: &str, memory_mib: u64) -> Result<VmInfo, HostError> {
        let req = host::Balloon { memory_mib };
        self.call("POST", &format!("/vms/{vm}/balloon"), Some(&req), Duration::from_secs(60)).await
    }
}

/// A host's health as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub url: String,
    pub capacity_mib: u64,
    pub up: bool,
    /// Consecutive failed health checks.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Milliseconds since the last good answer.
    pub last_ok_ms_ago: Option<u64>,
    pub balloon: bool,
    pub accel: Option<host::Accel>,
    pub vms: usize,
}

/// A change of a host's health, for the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostChange {
    Down(String),
    Up(String),
}

struct Entry {
    client: HostClient,
    url: String,
    capacity_mib: u64,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    up: bool,
    failures: u32,
    last_error: Option<String>,
    last_ok: Option<Instant>,
    facts: Option<HostFacts>,
}

/// Every configured host, health-checked.
pub struct HostRegistry {
    entries: Vec<Entry>,
    interval: Duration,
    /// Failed checks in a row after which a host counts as down.
    failures_to_down: u32,
}

impl HostRegistry {
    /// Hosts start as up: the first failed checks mark them down.
    pub fn new(hosts: &[HostConfig], interval: Duration, failures_to_down: u32) -> Arc<Self> {
        let entries = hosts
            .iter()
            .map(|h| Entry {
                client: HostClient::new(&h.name, &h.url, &h.token),
                url: h.url.clone(),
                capacity_mib: h.memory_mib,
                health: Mutex::new(Health { up: true, ..Default::default() }),
            })
            .collect();
        Arc::new(HostRegistry { entries, interval, failures_to_down: failures_to_down.max(1) })
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.client.name == name)
    }

    pub fn client(&self, name: &str) -> Option<&HostClient> {
        self.entry(name).map(|e| &e.client)
    }

    /// (name, capacity in MiB, up) of every host, in config order.
    pub fn capacities(&self) -> Vec<(String, u64, bool)> {
        self.entries
            .iter()
            .map(|e| (e.client.name.clone(), e.capacity_mib, lock(&e.health).up))
            .collect()
    }

    /// Whether the host's guests can be resized live (virtio-balloon), as it last said.
    pub fn balloon(&self, name: &str) -> bool {
        self.entry(name).is_some_and(|e| lock(&e.health).facts.as_ref().is_some_and(|f| f.balloon))
    }

    pub fn status(&self) -> Vec<HostStatus> {
        self.entries
            .iter()
            .map(|e| {
                let h = lock(&e.health);
                HostStatus {
                    name: e.client.name.clone(),
                    url: e.url.clone(),
                    capacity_mib: e.capacity_mib,
                    up: h.up,
                    failures: h.failures,
                    last_error: h.last_error.clone(),
                    last_ok_ms_ago: h.last_ok.map(|t| t.elapsed().as_millis() as u64),
                    balloon: h.facts.as_ref().is_some_and(|f| f.balloon),
                    accel: h.facts.as_ref().and_then(|f| f.accel),
                    vms: h.facts.as_ref().map_or(0, |f| f.vms.len()),
                }
            })
            .collect()
    }

    /// Checks every host once and returns the changes of up/down.
    pub async fn check_all(&self) -> Vec<HostChange> {
        let timeout = self.interval.max(Duration::from_secs(2));
        let answers = futures_util::future::join_all(self.entries.iter().map(|e| e.client.facts(timeout))).await;
        let mut changes = Vec::new();
        for (e, answer) in self.entries.iter().zip(answers) {
            let mut h = lock(&e.health);
            match answer {
                Ok(facts) => {
                    h.failures = 0;
                    h.last_error = None;
                    h.last_ok = Some(Instant::now());
                    h.facts = Some(facts);
                    if !h.up {
                        log::info!("host {} answers again: up", e.client.name);
                        h.up = true;
                        changes.push(HostChange::Up(e.client.name.clone()));
                    }
                }
                Err(err) => {
                    h.failures += 1;
                    log::warn!("host {} health check {} failed: {err}", e.client.name, h.failures);
                    h.last_error = Some(err.to_string());
                    if h.up && h.failures >= self.failures_to_down {
                        log::error!("host {} marked down after {} failed checks", e.client.name, h.failures);
                        h.up = false;
                        changes.push(HostChange::Down(e.client.name.clone()));
                    }
                }
            }
        }
        changes
    }

    /// Checks the hosts every interval until the receiver goes away.
    pub async fn watch(self: Arc<Self>, tx: mpsc::Sender<HostChange>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for change in self.check_all().await {
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a few field writes: a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
