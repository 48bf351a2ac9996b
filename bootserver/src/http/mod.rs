//! HTTP service: the boot dir (with Range) and the iPXE boot script.

pub mod ipxe;
pub mod range;

use std::collections::HashMap;
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use axum::body::Body;
use futures_util::Stream;
use hyper::body::Bytes;
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
    /// Each download's end goes to the boot-stage reports.
    pub stages: crate::stages::Sink,
}

impl HttpState {
    fn report(&self, peer: SocketAddr, name: &str, bytes: Option<u64>, ms: u64, error: Option<String>) {
        if let IpAddr::V4(ip) = peer.ip() {
            let protocol = crate::stages::Protocol::Http;
            self.stages.record_from(ip, crate::stages::Event::File { name: name.to_string(), protocol, bytes, ms, error });
        }
    }
}

type Report = Box<dyn FnOnce(u64, Option<String>) + Send>;

/// A response body that counts what it handed to the connection and reports once, when it
/// ends or is dropped (the client went away): the per-chunk cost is an addition.
struct Counted<S> {
    inner: S,
    sent: u64,
    expected: u64,
    report: Option<Report>,
}

impl<S> Counted<S> {
    fn finish(&mut self, error: Option<String>) {
        if let Some(report) = self.report.take() {
            report(self.sent, error);
        }
    }
}

impl<S: Stream<Item = std::io::Result<Bytes>> + Unpin> Stream for Counted<S> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(b))) => {
                self.sent += b.len() as u64;
                if self.sent >= self.expected {
                    self.finish(None);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("reading the file: {e}");
                self.finish(Some(why));
            }
            Poll::Ready(None) => {
                let why = (self.sent < self.expected).then(|| format!("file ended after {} of {} bytes", self.sent, self.expected));
                self.finish(why);
            }
            Poll::Pending => {}
        }
        next
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        let why = format!("connection closed after {} of {} bytes", self.sent, self.expected);
        self.finish(Some(why));
    }
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
    let script = state.plan.script(mac);
    state.report(peer, "boot.ipxe", Some(script.len() as u64), 0, None);
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], script).into_response()
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
            state.report(peer, &String::from_utf8_lossy(&decoded), None, 0, Some(e.to_string()));
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
    let inner = tokio_util::io::ReaderStream::with_capacity(f.take(count), 256 * 1024);
    let name = String::from_utf8_lossy(&decoded).into_owned();
    let started = std::time::Instant::now();
    let report: Report = Box::new(move |bytes, error| {
        state.report(peer, &name, Some(bytes), started.elapsed().as_millis() as u64, error);
    });
    let stream = Counted { inner, sent: 0, expected: count, report: Some(report) };
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
