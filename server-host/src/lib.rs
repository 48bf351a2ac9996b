//! `server-host`: the host agent of a virtualization server. It turns the broker's HTTP
//! requests into QEMU VMs (template + copy-on-write overlay + the user's data disk), keeps their
//! state in SQLite, re-adopts them after a restart, and reports what happens to them.

mod accel;
mod api;
pub mod config;
mod error;
mod images;
mod manager;
mod procstats;
mod qemu;
mod qmp;
mod store;

pub use config::Config;

use std::sync::Arc;
use std::time::Duration;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent until SIGINT or SIGTERM. VMs keep running when it stops; the next start
/// re-adopts them.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listen = cfg.listen;
    let tls = cfg.tls()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(
        proto::tls::mtls_server_config(&tls.cert, &tls.key, &tls.ca).context("key `tls_dir`")?,
    );
    let mgr = manager::Manager::start(cfg).await?;
    let app = api::router(mgr);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;
    log::info!(
        "API on https://{listen}{} for clients with a certificate of {}",
        proto::host::API_PREFIX,
        tls.ca.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let open = Arc::new(());
    let accepting = accept_loop(listener, acceptor, app, open.clone());
    tokio::select! {
        r = accepting => return r,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    log::info!("stopping; VMs keep running and are re-adopted at the next start");
    // Event streams never end by themselves: give requests in flight a moment, not forever.
    let t0 = std::time::Instant::now();
    while Arc::strong_count(&open) > 1 && t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Takes connections until the listener fails for good: each one's TLS handshake (a client
/// without a certificate of the CA ends here), then HTTP/1 on it. `open` is cloned into every
/// connection, so its count tells how many are still being served.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    open: Arc<()>,
) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                log::warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, open) = (acceptor.clone(), app.clone(), open.clone());
        tokio::spawn(async move {
            let _open = open;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log::warn!("API: TLS handshake with {peer} refused: {e}");
                    return;
                }
                Err(_) => {
                    log::warn!("API: {peer} did not finish its TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                tower::ServiceExt::oneshot(app.clone(), req)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await {
                log::debug!("API: connection of {peer}: {e}");
            }
        });
    }
}
