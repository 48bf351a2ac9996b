//! The boot-stage reports on the admin API, and `bootserver client MAC stages`.
//!
//! - `GET /api/boots`: every PC with a report, PCs that only did DHCP (never announced) too,
//!   the most recently active first.
//! - `GET /api/boots/{mac}`: one PC's current boot (404 if none); for an announced PC the same
//!   is in `GET /api/clients/{mac}` as `stages`.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use proto::agent::MacAddr;

use super::{Sink, StagesView};
use crate::admin::Endpoint;

async fn list(State(sink): State<Sink>) -> Json<Vec<StagesView>> {
    Json(sink.list())
}

async fn one(State(sink): State<Sink>, Path(mac): Path<String>) -> Response {
    let err = |status, text: String| (status, Json(serde_json::json!({ "error": text }))).into_response();
    let mac = match mac.parse::<MacAddr>() {
        Ok(m) => m.to_string(),
        Err(e) => return err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match sink.view(&mac) {
        Some(v) => Json(v).into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no boot of {mac} was seen")),
    }
}

pub fn router(sink: Sink) -> Router {
    Router::new().route("/api/boots", get(list)).route("/api/boots/:mac", get(one)).with_state(sink)
}

/// `bootserver client MAC stages [--json]`.
pub fn print_stages(api: &Endpoint, mac: &str, json: bool) -> anyhow::Result<()> {
    let mac = mac.parse::<MacAddr>().map_err(|e| anyhow::anyhow!(e))?;
    let (status, body) = crate::admin::block_on(crate::admin::request(api, "GET", &format!("/api/boots/{mac}"), None))?;
    if status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("{mac}: {msg} (admin API answered {status})");
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let view: StagesView =
        serde_json::from_str(&body).with_context(|| format!("admin API at {} sent unreadable JSON", api.addr))?;
    print!("{}", table(&view));
    Ok(())
}

/// The human-readable report: a headline (where the PC is) and one line per stage.
pub fn table(v: &StagesView) -> String {
    let state = match (&v.stuck, &v.last_stage) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => format!("reached {s}"),
        (None, None) => "no stage yet".into(),
    };
    let announced = if v.announced { "" } else { " (never announced)" };
    let mut out = format!("{}{announced}: {state}, {:.1} s ago\n", v.mac, v.since_ms as f64 / 1000.0);
    out.push_str(&format!("{:>9}  {:<24}  {:<13}  {}\n", "MS", "TIME (UTC)", "STAGE", "DETAILS"));
    for s in &v.current {
        out.push_str(&format!("{:>9}  {:<24}  {:<13}  {}\n", s.ms, s.time, s.stage, details(&s.details)));
    }
    if v.dropped > 0 {
        out.push_str(&format!("({} more stages not kept)\n", v.dropped));
    }
    for e in &v.earlier {
        out.push_str(&format!(
            "earlier boot {}: {} stage(s), reached {}\n",
            e.time,
            e.stages,
            e.last_stage.as_deref().unwrap_or("nothing")
        ));
    }
    out
}

fn details(d: &serde_json::Value) -> String {
    let s = |k: &str| match &d[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    if d.get("protocol").is_some() {
        let result = if d["complete"] == true { "complete".to_string() } else { format!("failed: {}", s("error")) };
        let bytes = if d["bytes"].is_null() { String::new() } else { format!("{} bytes, ", s("bytes")) };
        format!("{} over {}, {bytes}{} ms, {result}", s("name"), s("protocol"), s("ms"))
    } else if d.get("mode").is_some() {
        let acked = if d["acked"] == true { ", acked" } else { "" };
        format!("{} by {}, client {}, pxe {}{acked}", s("address"), s("mode"), s("client"), s("pxe"))
    } else if d.get("agent_version").is_some() {
        format!("agent {} at {}, booted in {} ms", s("agent_version"), s("address"), s("boot_ms"))
    } else if d.get("how").is_some() {
        format!("{} ({})", s("person"), s("how"))
    } else {
        String::new()
    }
}
