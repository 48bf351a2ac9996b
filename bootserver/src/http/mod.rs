//! HTTP service: the boot dir (with Range) and the iPXE boot script.

pub mod ipxe;
pub mod range;

use std::collections::HashMap;
use std::io::SeekFrom;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::bootfiles::{BootFiles, OpenError};
use crate::logsafe::Esc;
use crate::net::limits::{serve_router, ConnLimiter};
use ipxe::BootPlan;
use range::RangeRequest;

pub struct HttpState {
    pub files: Arc<BootFiles>,
    pub plan: BootPlan,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(script))
        .fallback(file)
        .with_state(state)
}

/// Serves for ever, within `limiter`'s caps and timeouts.
pub async fn run(listener: tokio::net::TcpListener, state: Arc<HttpState>, limiter: Arc<ConnLimiter>) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    log::info!("http: serving {} on {addr}", state.files.root().display());
    serve_router(listener, limiter, router(state)).await.with_context(|| format!("http server on {addr}"))
}

async fn script(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mac = q.get("mac").map(String::as_str);
    log::info!("http: {peer} fetched the boot script (mac {})", Esc(mac.unwrap_or("?")));
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        state.plan.script(mac),
    )
        .into_response()
}

async fn file(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")], "read-only\n")
            .into_response();
    }
    let raw = uri.path();
    let decoded = match percent_decode(raw.trim_start_matches('/')) {
        Some(d) => d,
        None => {
            log::warn!("http: {peer} sent a malformed path {raw:?}");
            return (StatusCode::BAD_REQUEST, "malformed path\n").into_response();
        }
    };
    let opened = state.files.open(&decoded);
    let bf = match opened {
        Ok(f) => f,
        Err(e) => {
            let status = match &e {
                OpenError::NotFound | OpenError::Empty | OpenError::NotAFile => StatusCode::NOT_FOUND,
                OpenError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::FORBIDDEN,
            };
            if e.is_refusal() {
                log::warn!("http: refused {peer} {raw:?}: {e}");
            } else {
                log::info!("http: {peer} {raw:?}: {e}");
            }
            return (status, format!("{e}\n")).into_response();
        }
    };
    let len = bf.len;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match range::parse(range_header, len) {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeRequest::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    log::info!("http: {peer} GET {} ({count} of {len} bytes)", Esc(raw));
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        builder =
            builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", start + count - 1));
    }
    if method == Method::HEAD {
        return builder.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let mut f = tokio::fs::File::from_std(bf.file);
    if start > 0 {
        if let Err(e) = f.seek(SeekFrom::Start(start)).await {
            log::warn!("http: seeking {}: {e}", Esc(raw));
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(count), 256 * 1024);
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Decodes `%XX` escapes. Returns None for a malformed escape. Public for the fuzz target.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits exactly: from_str_radix alone would also take a sign ("%+1").
            let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%20b").unwrap(), b"a b");
        assert_eq!(super::percent_decode("%2e%2e/x").unwrap(), b"../x");
        assert_eq!(super::percent_decode("a%00").unwrap(), b"a\0");
        assert!(super::percent_decode("a%2").is_none());
        assert!(super::percent_decode("a%zz").is_none());
        // Found by the http_range fuzz target: a sign is not a hex digit.
        assert!(super::percent_decode("x%+00").is_none());
        assert!(super::percent_decode("%-1").is_none());
    }
}
