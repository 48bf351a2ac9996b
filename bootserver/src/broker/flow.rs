//! The whole flow on the boot server: the proxy, the host registry and its health checks, and
//! the orchestrator, started from the `[desktops]` config; and what an agent's announce turns
//! into (an assignment to the proxy, or a refusal for its screen).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use proto::agent::{Assignment, BrokerMessage, PasswordSource};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::net::limits::{ConnLimiter, FdBudget, ServiceLimits};
use crate::supervise::{Rebind, Supervisor};

use super::hosts::HostRegistry;
use super::orchestrator::{Notice, Orchestrator, Outcome, Spec};
use super::proxy::{Proxy, ProxyOptions, ViewerTls};
use super::sessions::SessionStore;
use super::settings::BrokerConfig;

/// The running broker parts, for the agent listener and the admin API.
pub struct Desktops {
    pub orchestrator: Arc<Orchestrator>,
    pub hosts: Arc<HostRegistry>,
    pub proxy: Arc<Proxy>,
    /// Messages for clients' screens; the agent listener sends them as `ShowMessage`.
    pub notices: mpsc::UnboundedReceiver<Notice>,
    /// Users whose sessions came back from the session store; their PCs should reconnect.
    pub recovered: Vec<String>,
}

/// The broker's side of mutual TLS with the hosts and their VMs: the CA of `state_dir` and the
/// broker's client certificate from it (issued when missing).
pub fn host_tls(state_dir: &Path) -> anyhow::Result<Arc<proto::tls::rustls::ClientConfig>> {
    let (ca, cert, key) = crate::ca::ensure_client(state_dir)?;
    Ok(proto::tls::mtls_client_config(&ca, &cert, &key)?)
}

/// Binds the proxy on `proxy_addr` (within `limits`), puts back the sessions of the store in
/// `state_dir`, starts health checks and the orchestrator's follower.
pub async fn start(
    cfg: &BrokerConfig,
    state_dir: &Path,
    proxy_addr: SocketAddr,
    limits: &ServiceLimits,
    budget: &Arc<FdBudget>,
    sup: &mut Supervisor,
    tls: ViewerTls,
) -> anyhow::Result<Desktops> {
    let proxy = Proxy::new(ProxyOptions {
        switch_timeout: std::time::Duration::from_secs(cfg.switch_timeout_secs),
        switch_settle: std::time::Duration::from_millis(cfg.switch_settle_ms),
        orphan_timeout: std::time::Duration::from_secs(cfg.orphan_timeout_secs),
        handshake_timeout: limits.handshake_timeout,
        tls: Some(tls),
        legacy_vnc_auth: cfg.legacy_vnc_auth,
        standby_timeout: std::time::Duration::from_secs(cfg.viewer_standby_secs),
        ..Default::default()
    });
    let mut listener = Rebind::new(move || async move {
        TcpListener::bind(proxy_addr)
            .await
            .with_context(|| format!("VNC proxy on {proxy_addr} (key `desktops.proxy_port`)"))
    })
    .await?;
    // A viewer holds two open files: its own connection and its VM's.
    let limiter = ConnLimiter::new("proxy", "limits.proxy", limits.clone(), 2, budget.clone());
    let p = proxy.clone();
    sup.add("proxy", move || {
        let (l, p, limiter) = (listener.bound(), p.clone(), limiter.clone());
        async move { p.serve(l.await?, limiter).await.context("VNC proxy") }
    });
    // One identity towards the hosts: their APIs and their VMs' VNC on other machines.
    let tls = host_tls(state_dir)?;
    super::proxy::backend::set_vm_tls(tls.clone());
    let hosts = HostRegistry::new(&cfg.hosts, tls, cfg.health_interval(), cfg.health_failures)?;
    let (orchestrator, notices) = Orchestrator::new(cfg.clone(), hosts.clone(), proxy.clone(), proxy_addr)?;
    let store_path = state_dir.join(&cfg.sessions_file);
    let store = SessionStore::open(&store_path).context("key `desktops.sessions_file`")?;
    let recovered = orchestrator.recover(store).await?;
    // Not supervised: this one ends once every host has answered.
    tokio::spawn(orchestrator.clone().follow_pending(cfg.health_interval()));
    let (tx, rx) = mpsc::channel(16);
    let h = hosts.clone();
    sup.add("health checks", move || {
        let (h, tx) = (h.clone(), tx.clone());
        async move {
            h.watch(tx).await;
            Ok(())
        }
    });
    // Shared so that a restarted follower picks up where the last one stopped.
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let o = orchestrator.clone();
    sup.add("host follower", move || {
        let (o, rx) = (o.clone(), rx.clone());
        async move {
            o.follow_hosts(&mut *rx.lock().await).await;
            Ok(())
        }
    });
    Ok(Desktops { orchestrator, hosts, proxy, notices, recovered })
}

/// The assignment that sends a PC's viewer to the proxy at `proxy` with `token`.
pub fn assignment(proxy: SocketAddr, token: String) -> Assignment {
    Assignment { vnc: proxy, session_token: token, password: Some(PasswordSource::SessionToken) }
}

/// What to send an agent that announced itself as `user` (its MAC), whose desktop is made
/// after `spec`.
pub async fn on_announce(orch: &Orchestrator, user: &str, spec: Spec) -> BrokerMessage {
    match orch.arrive_as(user, spec).await {
        Ok(Outcome::Assigned { proxy, token }) => BrokerMessage::Assignment(assignment(proxy, token)),
        Ok(Outcome::Refused { message } | Outcome::NoTemplate { message }) => BrokerMessage::Refused { reason: message },
        Err(e) => {
            log::error!("broker: announce of {user}: {e:#}");
            BrokerMessage::Refused { reason: format!("the broker could not start a desktop: {e}") }
        }
    }
}
