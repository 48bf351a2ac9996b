//! Starts the services a [`Settings`] asks for and runs them until a signal arrives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::bootfiles::BootFiles;
use crate::config::Settings;
use crate::http::{ipxe::BootPlan, HttpState};
use crate::net::limits::{raise_open_files, ConnLimiter};
use crate::statefile;
use crate::supervise::{Rebind, Supervisor};
use std::future::ready;

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

/// Runs every enabled service until SIGINT or SIGTERM; a service that fails is restarted
/// (see [`Supervisor`]) while the others go on.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Before anything is opened: the count of files open at start is part of the budget.
    let budget = raise_open_files(settings.limits.open_files_reserve).context("raising the open-files limit")?;
    let state = &settings.state_dir;
    statefile::private_dir(state).context("key `state_dir`")?;
    for path in statefile::tighten(state).context("key `state_dir`")? {
        log::warn!("made {} readable by this user only", path.display());
    }
    let mut files = BootFiles::new(&settings.boot_dir)
        .with_context(|| format!("opening boot dir {}", settings.boot_dir.display()))?;
    let plan = boot_plan(&settings, &mut files)?;
    // TFTP-only firmware that chain-loads iPXE can fetch the same script by name.
    let script_path: PathBuf = state.join(SCRIPT_NAME);
    statefile::write_private(&script_path, plan.script(None).as_bytes())?;
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

    // The leases as the broker sees them, in memory: a hello must come from its MAC's lease.
    let leases = crate::dhcp::LeaseView::default();
    // Boot-stage reports, beside the client registry; the file servers find a PC's MAC by
    // its address in the leases.
    let stages_db = state.join("clients.sqlite");
    let stages = crate::stages::Sink::open(&stages_db, leases.clone(), settings.limits.registry_flush)
        .with_context(|| format!("opening the boot-stage reports in {}", stages_db.display()))?;

    // Every socket is bound once here, so that a taken port stops the start; a restarted
    // service binds again.
    let mut sup = Supervisor::default();
    if settings.enable_http {
        let addr = SocketAddr::new(settings.address.into(), settings.http_port);
        let iface = settings.interface.clone();
        let mut listener = Rebind::new(move || ready(crate::net::tcp_listener(&iface, addr))).await?;
        let state = Arc::new(HttpState { files: files.clone(), plan: plan.clone(), stages: stages.clone() });
        // A connection that sends a file holds its socket and the file.
        let limiter = ConnLimiter::new("http", "limits.http", settings.limits.http.clone(), 2, budget.clone());
        sup.add("http", move || {
            let (l, state, limiter) = (listener.bound(), state.clone(), limiter.clone());
            async move { crate::http::run(l.await?, state, limiter).await }
        });
    }
    // Which PCs are enrolled: the broker's approval screens and the DHCP server's PXE answers.
    let enrolments = Arc::new(crate::broker::enrolment::Gate::open_in(&settings.state_dir)?);
    if settings.enable_dhcp {
        let (s, p, l, st) = (settings.clone(), plan.clone(), leases.clone(), stages.clone());
        let gate = settings.dhcp.pxe_enrolled_only.then(|| enrolments.clone());
        let mut dhcp = Rebind::new(move || {
            let service = crate::dhcp::Service::bind(&s, &p, l.clone()).map(|d| {
                let mut d = d.with_stages(st.clone());
                if let Some(g) = &gate {
                    d.enrolled_only(g.clone());
                }
                d
            });
            ready(service)
        })
        .await?;
        sup.add("dhcp", move || {
            let d = dhcp.bound();
            async move { d.await?.run().await }
        });
        if settings.dhcp.router_advertisement {
            let every = std::time::Duration::from_secs(settings.dhcp.ra_interval.max(1).into());
            let iface = settings.interface.clone();
            sup.add("router advertisements", move || crate::dhcp::ra::run(iface.clone(), every));
        }
    }
    if !settings.nfs.exports.is_empty() {
        let (s, st) = (settings.clone(), stages.clone());
        sup.add("nfs", move || {
            crate::nfs::run(s.interface.clone(), s.address, s.netmask, s.nfs.clone(), s.state_dir.clone(), st.clone())
        });
    }
    if settings.enable_tftp {
        let addr = SocketAddr::new(settings.address.into(), settings.tftp.port);
        let iface = settings.interface.clone();
        let service = Arc::new(
            crate::tftp::Service::new(files.clone(), &iface, settings.address, settings.tftp.clone())
                .with_stages(stages.clone()),
        );
        let mut socket = Rebind::new(move || ready(crate::net::udp_socket(&iface, addr, false))).await?;
        sup.add("tftp", move || {
            let (sock, service) = (socket.bound(), service.clone());
            async move { crate::tftp::run(sock.await?, service).await }
        });
    }
    if sup.is_empty() && !settings.enable_broker {
        anyhow::bail!("every service is disabled; enable at least one of dhcp, tftp, http, nfs, broker");
    }
    // The desktops (VNC proxy, hosts, orchestrator) where `[desktops]` names hosts; the proxy
    // listens on the boot server's address, the one the PCs reach.
    let desktops = if settings.desktops.hosts.is_empty() {
        None
    } else {
        let proxy_addr = SocketAddr::new(settings.address.into(), settings.desktops.proxy_port);
        let limits = &settings.limits.proxy;
        // Viewers get the same certificate as agents (issued here first when it is missing).
        let (cert, key) = crate::ca::ensure_server(&settings.state_dir, &crate::broker::listener::server_names(&settings))?;
        let tls = crate::broker::proxy::ViewerTls::from_files(&cert, &key)?;
        Some(crate::broker::flow::start(&settings.desktops, state, proxy_addr, limits, &budget, &mut sup, tls).await?)
    };
    // The broker: the agents' announces, the client registry and the admin API.
    if settings.enable_broker {
        let binding = crate::broker::hello_binding::HelloBinding::of(&settings, leases);
        crate::broker::listener::start(&settings, desktops, binding, enrolments, &mut sup, &budget, stages.clone()).await?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
        _ = term.recv() => log::info!("terminated, stopping"),
        _ = sup.run() => log::error!("no service left to run, stopping"),
    }
    Ok(())
}
