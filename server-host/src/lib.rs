//! `server-host`: the host agent of a virtualization server. It turns the broker's HTTP
//! requests into QEMU VMs (template + copy-on-write overlay + the user's data disk), keeps their
//! state in SQLite, re-adopts them after a restart, and reports what happens to them.

mod accel;
mod api;
pub mod config;
mod error;
mod images;
mod manager;
mod qemu;
mod qmp;
mod store;

pub use config::Config;

/// Runs the agent until SIGINT or SIGTERM. VMs keep running when it stops; the next start
/// re-adopts them.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listen = cfg.listen;
    let token = cfg.token.clone();
    let mgr = manager::Manager::start(cfg).await?;
    let app = api::router(mgr, token);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;
    log::info!("API on http://{listen}{}", proto::host::API_PREFIX);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            log::info!("stopping; VMs keep running and are re-adopted at the next start");
            notify.notify_one();
        });
    // Event streams never end by themselves: give requests in flight a moment, not forever.
    tokio::select! {
        r = server => r.context("serving the API"),
        _ = async { stopping.notified().await; tokio::time::sleep(std::time::Duration::from_secs(3)).await } => Ok(()),
    }
}
