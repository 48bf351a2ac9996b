//! The metrics' part of the admin API: `GET /api/hosts/{name}/series?range=`, `GET
//! /api/analysis` and `GET /metrics` (see `openapi.json`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::rollup::{self, FIELDS};
use super::{analysis, unix_now, Metrics};
use crate::broker::hosts::HostRegistry;
use crate::broker::listener::Broker;
use crate::broker::orchestrator::Orchestrator;

#[derive(Clone)]
pub struct Ctx {
    pub metrics: Arc<Metrics>,
    pub broker: Arc<Broker>,
    /// Where `[desktops]` names hosts.
    pub desktops: Option<(Arc<Orchestrator>, Arc<HostRegistry>)>,
    pub pool_configured: usize,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The ranges a chart may ask for, in seconds.
pub const RANGES: [(&str, i64); 4] = [("1h", 3600), ("1d", rollup::DAY), ("30d", 30 * rollup::DAY), ("1y", 365 * rollup::DAY)];

#[derive(Deserialize)]
struct SeriesQuery {
    range: Option<String>,
}

async fn series(State(c): State<Ctx>, Path(name): Path<String>, Query(q): Query<SeriesQuery>) -> Response {
    let range = q.range.as_deref().unwrap_or("1h");
    let Some(&(_, secs)) = RANGES.iter().find(|(n, _)| *n == range) else {
        let names: Vec<&str> = RANGES.iter().map(|r| r.0).collect();
        return error(StatusCode::BAD_REQUEST, format!("range must be one of {}, not {range:?}", names.join(", ")));
    };
    if !c.desktops.as_ref().is_some_and(|(_, h)| h.client(&name).is_some()) {
        return error(StatusCode::NOT_FOUND, format!("no host {name:?} in [desktops]"));
    }
    let archive = rollup::archive_for(secs);
    let samples = match c.metrics.store.samples(&name, archive.step, unix_now() - secs) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let step = if archive.step == 0 { c.metrics.cfg.sample_secs as i64 } else { archive.step };
    let mut body = serde_json::Map::new();
    body.insert("host".into(), name.into());
    body.insert("range".into(), range.into());
    body.insert("step".into(), step.into());
    body.insert("t".into(), samples.iter().map(|s| s.t).collect::<Vec<_>>().into());
    for (i, field) in FIELDS.iter().enumerate() {
        body.insert((*field).into(), samples.iter().map(|s| s.v[i]).collect::<Vec<_>>().into());
    }
    Json(body).into_response()
}

async fn analysis(State(c): State<Ctx>) -> Response {
    let now = unix_now();
    let since = now - rollup::HOUR.keep;
    let store = &c.metrics.store;
    let (arrivals, active) = match (store.arrivals(since), store.active_hours(since)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let refill = c.metrics.cfg.pool_refill_secs as i64;
    Json(analysis::analyse(&arrivals, &active, refill, c.pool_configured, now)).into_response()
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the classic text format else.
async fn metrics(State(c): State<Ctx>, headers: HeaderMap) -> Response {
    let open = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match super::prom::render(&c).await {
        Ok(text) if open => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
        }
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], super::prom::classic(&text)).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/api/hosts/:name/series", get(series))
        .route("/api/analysis", get(analysis))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}
