//! The virtualization hosts: a client for each `server-host` API (see `proto::host`), and the
//! registry that health-checks them and reports a host that stops answering.
//!
//! Every call is HTTPS with mutual TLS: the broker shows its client certificate of the
//! deployment's CA and takes only a host certificate of that CA made for the address or name
//! in the host's `url`. One connection per call (a health check every few seconds, a VM
//! start now and then); rustls resumes the session, so most handshakes skip the signatures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use proto::host::{self, ApiError, CreateVm, CreatedVm, HostFacts, StopVm, VmInfo};
use proto::tls::rustls::pki_types::ServerName;
use proto::tls::rustls::ClientConfig;
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a host's API is, from its `url` (`https://HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUrl {
    /// `HOST:PORT`, for connecting and the Host header.
    pub authority: String,
    /// What the host's certificate must be made for.
    pub server_name: ServerName<'static>,
}

impl HostUrl {
    pub fn parse(url: &str) -> Result<HostUrl, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("url {url:?} must start with https:// (hosts are reached over mutual TLS)"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("url {url:?}: give only https://HOST:PORT"));
        }
        let auth = uri.authority().ok_or_else(|| format!("url {url:?} names no host"))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string()).map_err(|e| format!("url {url:?}: {e}"))?;
        let authority = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(443));
        Ok(HostUrl { authority, server_name })
    }
}

/// One `server-host`'s API.
#[derive(Clone)]
pub struct HostClient {
    pub name: String,
    url: HostUrl,
    tls: tokio_rustls::TlsConnector,
}

impl HostClient {
    /// A client of the host at `url` (checked by [`HostUrl::parse`] when the config was read).
    pub fn new(name: &str, url: &str, tls: Arc<ClientConfig>) -> Result<Self, String> {
        let url = HostUrl::parse(url).map_err(|e| format!("desktops.hosts {name:?}: {e}"))?;
        Ok(HostClient { name: name.to_string(), url, tls: tls.into() })
    }

    /// One request on a connection of its own: TCP, the TLS handshake, HTTP/1.
    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), BoxError> {
        let tcp = tokio::net::TcpStream::connect(&self.url.authority).await?;
        let _ = tcp.set_nodelay(true);
        let stream = self.tls.connect(self.url.server_name.clone(), tcp).await.map_err(|e| -> BoxError {
            match e.get_ref().and_then(|i| i.downcast_ref::<proto::tls::rustls::Error>()) {
                Some(t) => format!("TLS: {}", proto::tls::explain(t)).into(),
                None => e.into(),
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        // Ends when the answer is read and `sender` dropped.
        tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, HostError> {
        let (host, p) = (self.name.clone(), path.to_string());
        let transport = |e: BoxError| HostError::Transport {
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
            .uri(format!("{}{path}", host::API_PREFIX))
            .header("host", &self.url.authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| transport(e.into()))?;
        let (status, bytes) = tokio::time::timeout(timeout, self.send(req))
            .await
            .map_err(|_| HostError::Timeout { host: host.clone(), method, path: p.clone(), timeout })?
            .map_err(transport)?;
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

    /// The host's load counters and gauges, for the time series.
    pub async fn stats(&self, timeout: Duration) -> Result<host::HostStats, HostError> {
        self.call("GET", "/stats", None::<&()>, timeout).await
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

    /// The templates the host can make desktops from.
    pub async fn templates(&self, timeout: Duration) -> Result<Vec<host::TemplateInfo>, HostError> {
        self.call("GET", "/templates", None::<&()>, timeout).await
    }

    /// Throws away the user's disks on the host (it refuses while a VM of theirs runs).
    pub async fn reset(&self, user: &str) -> Result<host::Event, HostError> {
        self.call("POST", &format!("/users/{user}/reset"), None::<&()>, Duration::from_secs(60)).await
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
    /// Hosts start as up: the first failed checks mark them down. `tls` holds the CA and the
    /// broker's client certificate.
    pub fn new(
        hosts: &[HostConfig],
        tls: Arc<ClientConfig>,
        interval: Duration,
        failures_to_down: u32,
    ) -> anyhow::Result<Arc<Self>> {
        let entries = hosts
            .iter()
            .map(|h| {
                Ok(Entry {
                    client: HostClient::new(&h.name, &h.url, tls.clone()).map_err(anyhow::Error::msg)?,
                    url: h.url.clone(),
                    capacity_mib: h.memory_mib,
                    health: Mutex::new(Health { up: true, ..Default::default() }),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(HostRegistry { entries, interval, failures_to_down: failures_to_down.max(1) }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_urls_are_https_with_a_name_to_check() {
        let u = HostUrl::parse("https://10.0.0.11:8470").unwrap();
        assert_eq!(u.authority, "10.0.0.11:8470");
        assert_eq!(u.server_name, ServerName::try_from("10.0.0.11").unwrap());
        let u = HostUrl::parse("https://h1.lab/").unwrap();
        assert_eq!(u.authority, "h1.lab:443");
        assert_eq!(u.server_name, ServerName::try_from("h1.lab").unwrap());
        let u = HostUrl::parse("https://[fd00::11]:8470").unwrap();
        assert_eq!(u.authority, "[fd00::11]:8470");
        assert_eq!(u.server_name, ServerName::try_from("fd00::11").unwrap());
        assert!(HostUrl::parse("http://10.0.0.11:8470").unwrap_err().contains("https://"));
        assert!(HostUrl::parse("https://10.0.0.11:8470/v1").unwrap_err().contains("only"));
        assert!(HostUrl::parse("10.0.0.11:8470").is_err());
    }
}
