//! The broker's part of the admin API (JSON): hosts, desktop VMs, the current memory level,
//! each decision with its steps and timings, and the proxy's sessions; and a new viewer token
//! for a user's desktop. Merged into the admin
//! router with `.merge(crate::broker::admin_routes::router(orchestrator, hosts, proxy))`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

/// `POST /api/sessions/{user}/token` (a JSON body, `{}`): rotates the user's token and returns
/// the new one, which the PC is sent too. The token is in the answer only, never in the log.
async fn new_token(State(c): State<Ctx>, Path(user): Path<String>, Json(_): Json<serde_json::Value>) -> Response {
    let err = |status, text: String| (status, Json(serde_json::json!({ "error": text }))).into_response();
    match c.orch.viewer_token(&user).await {
        Ok(Some(token)) => {
            log::info!("admin: a new viewer token for {}", crate::logsafe::Esc(&user));
            Json(serde_json::json!({ "token": token, "proxy": c.orch.proxy_addr() })).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, format!("{user} has no desktop")),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// `POST /api/vms/{vm}/stop` (a JSON body, `{}`): stops a desktop VM the way a person's
/// desktop stops when nobody comes back for it (the orchestrator's leave): its viewer is cut
/// off, the VM stops, and a persistent desktop's data disk stays on its host for the next login.
async fn stop(State(c): State<Ctx>, Path(vm): Path<String>, Json(_): Json<serde_json::Value>) -> Response {
    let err = |status, text: String| (status, Json(serde_json::json!({ "error": text }))).into_response();
    let Some(user) = c.orch.desktops().into_iter().find(|d| d.vm == vm).map(|d| d.user) else {
        return err(StatusCode::NOT_FOUND, format!("no desktop VM {vm}"));
    };
    c.orch.disconnect_viewer(&user);
    match c.orch.leave(&user).await {
        Ok(()) => {
            log::info!("admin: stopped {}'s desktop {}", crate::logsafe::Esc(&user), crate::logsafe::Esc(&vm));
            Json(serde_json::json!({ "vm": vm, "user": user })).into_response()
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, format!("stopping {vm}: {e:#}")),
    }
}

/// `GET /api/hosts`, `/api/vms`, `/api/pool`, `/api/level`, `/api/decisions`, `/api/sessions`;
/// `POST /api/sessions/{user}/token`, `/api/vms/{vm}/stop`.
pub fn router(orch: Arc<Orchestrator>, hosts: Arc<HostRegistry>, proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/api/hosts", get(self::hosts))
        .route("/api/vms", get(vms))
        .route("/api/vms/:vm/stop", post(stop))
        .route("/api/pool", get(pool))
        .route("/api/level", get(level))
        .route("/api/decisions", get(decisions))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/:user/token", post(new_token))
        .with_state(Ctx { orch, hosts, proxy })
}
