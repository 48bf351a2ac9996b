//! The HTTP API (axum) the broker uses; see `proto::host` for the contract. It is served over
//! TLS to clients with a certificate of the deployment's CA only (see `crate::serve`): whoever
//! completes the handshake is the broker.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use proto::host::*;
use serde::Deserialize;

use crate::error::Error;
use crate::manager::Manager;

struct AppState {
    mgr: Arc<Manager>,
}

type St = State<Arc<AppState>>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            log::error!("{self}");
        } else {
            log::warn!("refused: {self}");
        }
        (status, Json(ApiError { error: self.to_string() })).into_response()
    }
}

/// Bad JSON is the client's fault: answer 400 with serde's reason.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Error> {
    b.map(|Json(v)| v).map_err(|e| Error::BadRequest(format!("bad request body: {}", e.body_text())))
}

pub fn router(mgr: Arc<Manager>) -> Router {
    let state = Arc::new(AppState { mgr });
    let api = Router::new()
        .route("/host", get(host))
        .route("/stats", get(stats))
        .route("/templates", get(templates))
        .route("/vms", get(vms).post(create))
        .route("/vms/:name", get(vm))
        .route("/vms/:name/stop", post(stop))
        .route("/vms/:name/balloon", post(balloon))
        .route("/vms/:name/assign", post(assign))
        .route("/vms/:name/vnc-password", post(vnc_password))
        .route("/vms/:name/screen", get(screen))
        .route("/users/:user", get(user))
        .route("/users/:user/reset", post(reset))
        .route("/users/:user/backup", post(backup))
        .route("/users/:user/restore", post(restore))
        .route("/history", get(history))
        .route("/events", get(events))
        .with_state(state);
    Router::new().nest(API_PREFIX, api)
}

async fn host(State(st): St) -> Result<Json<HostFacts>, Error> {
    Ok(Json(st.mgr.host().await?))
}

async fn stats(State(st): St) -> Result<Json<HostStats>, Error> {
    Ok(Json(st.mgr.stats().await?))
}

async fn templates(State(st): St) -> Json<Vec<TemplateInfo>> {
    Json(st.mgr.templates())
}

async fn vms(State(st): St) -> Result<Json<Vec<VmInfo>>, Error> {
    Ok(Json(st.mgr.vms().await?))
}

async fn create(State(st): St, b: Result<Json<CreateVm>, JsonRejection>) -> Result<(StatusCode, Json<CreatedVm>), Error> {
    let req = body(b)?;
    Ok((StatusCode::CREATED, Json(st.mgr.create(req).await?)))
}

async fn vm(State(st): St, Path(name): Path<String>) -> Result<Json<VmInfo>, Error> {
    Ok(Json(st.mgr.vm(&name).await?))
}

async fn stop(State(st): St, Path(name): Path<String>, b: Result<Json<StopVm>, JsonRejection>) -> Result<Json<Event>, Error> {
    // An empty body means the defaults.
    let req = match b {
        Err(JsonRejection::MissingJsonContentType(_)) => StopVm::default(),
        other => body(other)?,
    };
    let secs = req.deadline_secs.unwrap_or(30);
    if secs > 3600 {
        return Err(Error::BadRequest("deadline_secs must be at most 3600".into()));
    }
    Ok(Json(st.mgr.stop(&name, Duration::from_secs(secs)).await?))
}

async fn balloon(State(st): St, Path(name): Path<String>, b: Result<Json<Balloon>, JsonRejection>) -> Result<Json<VmInfo>, Error> {
    let req = body(b)?;
    Ok(Json(st.mgr.balloon(&name, req.memory_mib).await?))
}

async fn assign(State(st): St, Path(name): Path<String>, b: Result<Json<AssignVm>, JsonRejection>) -> Result<Json<VmInfo>, Error> {
    let req = body(b)?;
    Ok(Json(st.mgr.assign(&name, &req.user).await?))
}

async fn vnc_password(State(st): St, Path(name): Path<String>, b: Result<Json<VncPassword>, JsonRejection>) -> Result<StatusCode, Error> {
    let req = body(b)?;
    st.mgr.set_vnc_password(&name, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ScreenQuery {
    format: Option<String>,
}

async fn screen(State(st): St, Path(name): Path<String>, Query(q): Query<ScreenQuery>) -> Result<Response, Error> {
    let png = match q.format.as_deref() {
        None | Some("ppm") => false,
        Some("png") => true,
        Some(f) => return Err(Error::BadRequest(format!("format must be ppm or png, not {f:?}"))),
    };
    let bytes = st.mgr.screen(&name, png).await?;
    let ct = if png { "image/png" } else { "image/x-portable-pixmap" };
    Ok(([(header::CONTENT_TYPE, ct)], bytes).into_response())
}

async fn user(State(st): St, Path(user): Path<String>) -> Result<Json<UserInfo>, Error> {
    Ok(Json(st.mgr.user(&user).await?))
}

async fn reset(State(st): St, Path(user): Path<String>) -> Result<Json<Event>, Error> {
    Ok(Json(st.mgr.reset(&user).await?))
}

async fn backup(State(st): St, Path(user): Path<String>) -> Result<Json<Event>, Error> {
    Ok(Json(st.mgr.backup(&user).await?))
}

async fn restore(State(st): St, Path(user): Path<String>, b: Result<Json<Restore>, JsonRejection>) -> Result<Json<Event>, Error> {
    let req = body(b)?;
    Ok(Json(st.mgr.restore(&user, req.backup).await?))
}

#[derive(Deserialize)]
struct HistoryQuery {
    user: Option<String>,
    vm: Option<String>,
    since: Option<i64>,
    limit: Option<u32>,
}

async fn history(State(st): St, Query(q): Query<HistoryQuery>) -> Result<Json<Vec<Event>>, Error> {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    Ok(Json(st.mgr.history(q.since.unwrap_or(0), q.user.as_deref(), q.vm.as_deref(), limit)?))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<i64>,
}

/// Server-sent events: the history after `since` (default: nothing old), then live events.
async fn events(State(st): St, Query(q): Query<EventsQuery>) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Error> {
    // Subscribe before reading the history so nothing falls between the two.
    let rx = st.mgr.subscribe();
    let old = match q.since {
        Some(s) => st.mgr.history(s, None, None, 10_000)?,
        None => Vec::new(),
    };
    let mut last = old.last().map(|e| e.id).or(q.since).unwrap_or(0);
    let live = stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => return Some((ev, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => log::warn!("event stream lagged by {n}"),
                Err(_) => return None,
            }
        }
    })
    .filter(move |ev| {
        let fresh = ev.id > last;
        if fresh {
            last = ev.id;
        }
        futures::future::ready(fresh)
    });
    let all = stream::iter(old).chain(live).map(|ev| {
        Ok(SseEvent::default().id(ev.id.to_string()).event("vm").json_data(&ev).unwrap_or_else(|_| SseEvent::default()))
    });
    Ok(Sse::new(all).keep_alive(KeepAlive::default()))
}
