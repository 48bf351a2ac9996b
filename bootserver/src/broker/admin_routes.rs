//! The broker's part of the admin API (JSON): hosts, desktop VMs, the current memory level,
//! each decision with its steps and timings, and the proxy's sessions. Merged into the admin
//! router with `.merge(crate::broker::admin_routes::router(orchestrator, hosts, proxy))`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::hosts::{HostRegistry, HostStatus};
use super::orchestrator::{DecisionRecord, Desktop, Orchestrator, Overview};
use super::pool::PoolVm;
use super::proxy::{Proxy, SessionInfo};

#[derive(Clone)]
struct Ctx {
    orch: Arc<Orchestrator>,
    hosts: Arc<HostRegistry>,
    proxy: Arc<Proxy>,
}

async fn hosts(State(c): State<Ctx>) -> Json<Vec<HostStatus>> {
    Json(c.hosts.status())
}

async fn vms(State(c): State<Ctx>) -> Json<Vec<Desktop>> {
    Json(c.orch.desktops())
}

async fn level(State(c): State<Ctx>) -> Json<Overview> {
    Json(c.orch.overview())
}

async fn pool(State(c): State<Ctx>) -> Json<Vec<PoolVm>> {
    Json(c.orch.pool())
}

async fn decisions(State(c): State<Ctx>) -> Json<Vec<DecisionRecord>> {
    Json(c.orch.decisions())
}

async fn sessions(State(c): State<Ctx>) -> Json<Vec<SessionInfo>> {
    Json(c.proxy.sessions())
}

/// `GET /api/hosts`, `/api/vms`, `/api/pool`, `/api/level`, `/api/decisions`, `/api/sessions`.
pub fn router(orch: Arc<Orchestrator>, hosts: Arc<HostRegistry>, proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/api/hosts", get(self::hosts))
        .route("/api/vms", get(vms))
        .route("/api/pool", get(pool))
        .route("/api/level", get(level))
        .route("/api/decisions", get(decisions))
        .route("/api/sessions", get(sessions))
        .with_state(Ctx { orch, hosts, proxy })
}
