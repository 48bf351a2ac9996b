//! Starts the services a [`Settings`] asks for and runs them until a signal arrives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;

use crate::bootfiles::BootFiles;
use crate::config::Settings;
use crate::http::{ipxe::BootPlan, HttpState};

/// Name under which the generated iPXE script is also served by TFTP.
pub const SCRIPT_NAME: &str = "boot.ipxe";

/// Registers a kernel or initramfs given outside the boot dir and returns the name it is served
/// under.
fn serve_name(files: &mut BootFiles, path: &Path, fallback: &str) -> anyhow::Result<String> {
    if path.is_absolute() {
        if !path.is_file() {
            anyhow::bail!("{} does not exist or is not a file", path.display());
        }
        files.add_named(fallback, path.to_path_buf());
        Ok(fallback.to_string())
    } else {
        let name = path.to_string_lossy().into_owned();
        if files.open(name.as_bytes()).is_err() {
            log::warn!("{name} is not in the boot dir {}; clients will fail to load it", files.root().display());
        }
        Ok(name)
    }
}

pub fn boot_plan(s: &Settings, files: &mut BootFiles) -> anyhow::Result<BootPlan> {
    let kernel = serve_name(files, &s.kernel, "vmlinuz").context("key `kernel`")?;
    let initrd = serve_name(files, &s.initrd, "initrd.img").context("key `initrd`")?;
    let params = proto::cmdline::BootParams { broker: Some(s.broker), ..Default::default() };
    let cmdline = format!("{} {params}", s.cmdline).trim().to_string();
    Ok(BootPlan {
        server: s.address,
        http_port: s.http_port,
        tftp_port: s.tftp.port,
        transport: s.transport,
        kernel,
        initrd,
        cmdline,
    })
}

/// Runs every enabled service until SIGINT or SIGTERM, or until one of them fails.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.state_dir)
        .with_context(|| format!("creating state dir {}", settings.state_dir.display()))?;
    let mut files = BootFiles::new(&settings.boot_dir)
        .with_context(|| format!("opening boot dir {}", settings.boot_dir.display()))?;
    let plan = boot_plan(&settings, &mut files)?;
    // TFTP-only firmware that chain-loads iPXE can fetch the same script by name.
    let script_path: PathBuf = settings.state_dir.join(SCRIPT_NAME);
    std::fs::write(&script_path, plan.script(None))
        .with_context(|| format!("writing {}", script_path.display()))?;
    files.add_named(SCRIPT_NAME, script_path);
    let files = Arc::new(files);
    log::info!(
        "serving {} on {} ({}), kernel {} initrd {}, broker {}",
        settings.boot_dir.display(),
        settings.interface,
        settings.address,
        plan.kernel,
        plan.initrd,
        settings.broker
    );

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    if settings.enable_http {
        let addr = SocketAddr::new(settings.address.into(), settings.http_port);
        let listener = crate::net::tcp_listener(&settings.interface, addr)?;
        let state = Arc::new(HttpState { files: files.clone(), plan: plan.clone() });
        tasks.spawn(crate::http::run(listener, state));
    }
    if settings.enable_dhcp {
        let dhcp = crate::dhcp::Service::bind(&settings, &plan)?;
        tasks.spawn(dhcp.run());
        if settings.dhcp.router_advertisement {
            let every = std::time::Duration::from_secs(settings.dhcp.ra_interval.max(1).into());
            tasks.spawn(crate::dhcp::ra::run(settings.interface.clone(), every));
        }
    }
    if !settings.nfs.exports.is_empty() {
        tasks.spawn(crate::nfs::run(
            settings.interface.clone(),
            settings.address,
            settings.netmask,
            settings.nfs.clone(),
            settings.state_dir.clone(),
        ));
    }
    if settings.enable_tftp {
        let addr = SocketAddr::new(settings.address.into(), settings.tftp.port);
        let socket = crate::net::udp_socket(&settings.interface, addr, false)?;
        let service = crate::tftp::Service::new(
            files.clone(),
            &settings.interface,
            settings.address,
            settings.tftp.clone(),
        );
        tasks.spawn(crate::tftp::run(socket, Arc::new(service)));
    }
    if tasks.is_empty() && !settings.enable_broker {
        anyhow::bail!("every service is disabled; enable at least one of dhcp, tftp, http, nfs, broker");
    }
    // The desktops (VNC proxy, hosts, orchestrator) where `[desktops]` names hosts; the proxy
    // listens on the boot server's address, the one the PCs reach.
    let desktops = if settings.desktops.hosts.is_empty() {
        None
    } else {
        let proxy_addr = SocketAddr::new(settings.address.into(), settings.desktops.proxy_port);
        Some(crate::broker::flow::start(&settings.desktops, &settings.state_dir, proxy_addr, &mut tasks).await?)
    };
    // The broker: the agents' announces, the client registry and the admin API.
    if settings.enable_broker {
        crate::broker::listener::start(&settings, desktops, &mut tasks).await?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
        _ = term.recv() => log::info!("terminated, stopping"),
        res = tasks.join_next() => {
            if let Some(res) = res {
                res.context("service task panicked")??;
            }
        }
    }
    Ok(())
}
