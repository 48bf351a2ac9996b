//! The VM manager: creates, adopts, stops, resizes and accounts for the VMs of this host,
//! keeps the database in step, and hands a user's data disk from one VM to the next.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use proto::host::*;
use tokio::sync::{broadcast, watch};

use crate::config::{AccelChoice, Config};
use crate::error::{Error, Result};
use crate::images;
use crate::qemu::{self, Launch, Vnc, VmFiles};
use crate::qmp;
use crate::store::{now_ms, Store, VmRow};

/// A VM this process watches over QMP.
struct Live {
    qmp: Arc<qmp::Service>,
    stop_requested: Arc<AtomicBool>,
    ended: watch::Receiver<Option<Event>>,
}

pub struct Manager {
    cfg: Config,
    store: Mutex<Store>,
    live: Mutex<HashMap<String, Live>>,
    events: broadcast::Sender<Event>,
    accel: watch::Receiver<Option<(Accel, String)>>,
    /// Serializes everything that decides who owns which disk (create, end of a VM, user ops).
    ops: tokio::sync::Mutex<()>,
}

fn secs_now() -> u64 {
    now_ms() / 1000
}

impl Manager {
    /// Opens the state, starts the accelerator probe and re-adopts the VMs still running.
    pub async fn start(cfg: Config) -> anyhow::Result<Arc<Manager>> {
        use anyhow::Context;
        // Users' disks, their backups, the VMs' VNC sockets and the database are nobody
        // else's business: the state folder and everything made in it are owner-only, and what
        // an older version left readable is tightened here.
        for p in [cfg.state_dir.clone(), cfg.state_dir.join("vms"), cfg.state_dir.join("users"), cfg.state_dir.join("backups")] {
            images::private_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        tidy_users(&cfg.state_dir.join("users"));
        if cfg.vnc_tls() {
            let dir = cfg.vnc_tls_dir();
            qemu::vnc_tls_dir(&dir, &cfg.tls()?).with_context(|| format!("QEMU's TLS credentials in {}", dir.display()))?;
        }
        let store = Store::open(&cfg.state_dir.join("state.db"))?;
        let (accel_tx, accel_rx) = watch::channel(None);
        let probe_kernel = images::templates(&cfg.templates_dir)
            .into_iter()
            .find_map(|t| images::template(&cfg.templates_dir, &t.name).ok().and_then(|t| t.kernel));
        let (qemu_bin, secs, choice) = (cfg.qemu.clone(), cfg.kvm_probe_secs, cfg.accel);
        tokio::spawn(async move {
            let r = match choice {
                AccelChoice::Kvm => (Accel::Kvm, "set in the config".to_string()),
                AccelChoice::Tcg => (Accel::Tcg, "set in the config".to_string()),
                AccelChoice::Auto => crate::accel::probe(&qemu_bin, probe_kernel, secs).await,
            };
            log::info!("accelerator: {:?} ({})", r.0, r.1);
            let _ = accel_tx.send(Some(r));
        });
        let m = Arc::new(Manager {
            cfg,
            store: Mutex::new(store),
            live: Mutex::new(HashMap::new()),
            events: broadcast::channel(256).0,
            accel: accel_rx,
            ops: tokio::sync::Mutex::new(()),
        });
        m.adopt_all().await;
        Ok(m)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn files(&self, name: &str) -> VmFiles {
        VmFiles { dir: self.cfg.state_dir.join("vms").join(name) }
    }

    fn user_dir(&self, user: &str) -> PathBuf {
        self.cfg.state_dir.join("users").join(user)
    }

    fn emit(&self, kind: EventKind, vm: Option<&str>, user: Option<&str>, size: Option<u64>, detail: &str) -> Result<Event> {
        let ev = self.store().record(kind, vm, user, size, detail)?;
        log::info!("event {:?} vm={:?} user={:?}: {detail}", ev.kind, ev.vm, ev.user);
        let _ = self.events.send(ev.clone());
        Ok(ev)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn history(&self, since: i64, user: Option<&str>, vm: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        self.store().history(since, user, vm, limit)
    }

    pub fn templates(&self) -> Vec<TemplateInfo> {
        images::templates(&self.cfg.templates_dir)
    }

    async fn accel(&self) -> Result<Accel> {
        let mut rx = self.accel.clone();
        let deadline = Duration::from_secs(self.cfg.kvm_probe_secs + 30);
        let r = match tokio::time::timeout(deadline, rx.wait_for(|a| a.is_some())).await {
            Ok(Ok(v)) => Ok(v.as_ref().map(|a| a.0).unwrap_or(Accel::Tcg)),
            _ => Err(Error::Internal("the accelerator probe did not finish".into())),
        };
        r
    }

    fn live_qmp(&self, name: &str) -> Option<Arc<qmp::Service>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|l| l.qmp.clone())
    }

    async fn info(&self, r: &VmRow) -> VmInfo {
        let balloon_mib = match self.live_qmp(&r.name) {
            Some(q) => qmp::exec(&q, &r.name, qapi::qmp::query_balloon {}).await.ok().map(|b| b.actual as u64 >> 20),
            None => None,
        };
        VmInfo {
            name: r.name.clone(),
            template: r.template.clone(),
            user: r.user.clone(),
            persistent: r.persistent,
            memory_mib: r.memory_mib,
            balloon_mib,
            vcpus: r.vcpus,
            state: r.state,
            pid: r.pid,
            vnc: if let Some(a) = r.vnc.strip_prefix("tcp:") {
                VncAddress::Tcp(a.to_owned())
            } else if let Some(a) = r.vnc.strip_prefix("tls:") {
                VncAddress::Tls(a.to_owned())
            } else {
                VncAddress::Unix(r.vnc.trim_start_matches("unix:").to_owned())
            },
            data_disk: r.data_disk,
            os_overlay_temporary: r.os_temporary,
            created_at: r.created_at,
        }
    }

    pub async fn vms(&self) -> Result<Vec<VmInfo>> {
        let rows = self.store().vms()?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.info(r).await);
        }
        Ok(out)
    }

    pub async fn vm(&self, name: &str) -> Result<VmInfo> {
        let row = self.row(name)?;
        Ok(self.info(&row).await)
    }

    fn row(&self, name: &str) -> Result<VmRow> {
        self.store().vm(name)?.ok_or_else(|| Error::NotFound(format!("no VM named {name:?}")))
    }

    pub async fn host(&self) -> Result<HostFacts> {
        let mem = meminfo();
        let vms = self.vms().await?;
        let committed: u64 = vms.iter().map(|v| v.memory_mib).sum();
        let accel = self.accel.borrow().clone();
        Ok(HostFacts {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned(),
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            memory_total_mib: mem.0,
            memory_free_mib: mem.1,
            memory_committed_mib: committed,
            memory_allocatable_mib: mem.0.saturating_sub(self.cfg.reserved_memory_mib).saturating_sub(committed),
            accel: accel.as_ref().map(|a| a.0),
            accel_reason: accel.map(|a| a.1).unwrap_or_else(|| "KVM probe running".into()),
            balloon: true,
            vms,
        })
    }

    /// The host's load now, for the broker's time series.
    pub async fn stats(&self) -> Result<HostStats> {
        let vms = self.vms().await?;
        let committed: u64 = vms.iter().map(|v| v.memory_mib << 20).sum();
        Ok(crate::procstats::read(vms.len() as u32, committed))
    }

    fn validate(&self, req: &CreateVm) -> Result<images::Template> {
        if req.pool && !req.user.is_empty() {
            return Err(Error::BadRequest(format!("a pool VM belongs to nobody yet: user must be empty, not {:?}", req.user)));
        }
        for (what, v) in [("VM name", &req.name), ("user", &req.user)] {
            if !valid_name(v) && !(req.pool && v.is_empty()) {
                return Err(Error::BadRequest(format!(
                    "{what} {v:?} is not valid: 1-63 of a-z 0-9 - _, starting with a letter or digit"
                )));
            }
        }
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        if req.vcpus == 0 || req.vcpus > cpus {
            return Err(Error::BadRequest(format!("vcpus must be 1..={cpus} on this host, not {}", req.vcpus)));
        }
        if req.memory_mib < 64 {
            return Err(Error::BadRequest(format!("memory_mib {} is below the 64 MiB a guest needs", req.memory_mib)));
        }
        if let Some(p) = &req.vnc_password {
            if p.is_empty() || p.len() > VNC_PASSWORD_MAX {
                return Err(Error::BadRequest(format!("vnc_password must be 1..={VNC_PASSWORD_MAX} bytes")));
            }
        }
        images::template(&self.cfg.templates_dir, &req.template)
    }

    pub async fn create(self: &Arc<Self>, req: CreateVm) -> Result<CreatedVm> {
        let template = self.validate(&req)?;
        let accel = self.accel().await?;
        let _ops = self.ops.lock().await;
        let rows = self.store().vms()?;
        if rows.iter().any(|r| r.name == req.name) {
            return Err(Error::Conflict(format!("a VM named {:?} already exists", req.name)));
        }
        let (total, _) = meminfo();
        let committed: u64 = rows.iter().map(|r| r.memory_mib).sum();
        let allocatable = total.saturating_sub(self.cfg.reserved_memory_mib).saturating_sub(committed);
        if req.memory_mib > allocatable {
            return Err(Error::Unprocessable(format!(
                "memory_mib {} is beyond what this host can still give ({allocatable} MiB: {total} total, {} reserved, {committed} promised)",
                req.memory_mib, self.cfg.reserved_memory_mib
            )));
        }
        let mut undo = Undo::default();
        match self.create_inner(&req, &template, accel, &rows, &mut undo).await {
            Ok(c) => Ok(c),
            Err(e) => {
                log::warn!("creating VM {}: {e}; cleaning up", req.name);
                undo.run(self);
                Err(e)
            }
        }
    }

    async fn create_inner(
        self: &Arc<Self>,
        req: &CreateVm,
        template: &images::Template,
        accel: Accel,
        rows: &[VmRow],
        undo: &mut Undo,
    ) -> Result<CreatedVm> {
        let files = self.files(&req.name);
        // A folder left by a VM that ended while we were not running holds nothing of value.
        let _ = std::fs::remove_dir_all(&files.dir);
        images::private_dir(&files.dir).map_err(crate::error::internal(format!("creating {}", files.dir.display())))?;
        undo.dirs.push(files.dir.clone());
        let mine: Vec<&VmRow> = rows.iter().filter(|r| r.user == req.user && r.persistent).collect();
        let (os_disk, os_temporary, data, data_disk) = if req.pool {
            // The user's own OS overlay cannot be opened before anyone knows the user.
            let os = files.dir.join("os.qcow2");
            images::create_overlay(&self.cfg.qemu_img, &template.disk, &os)?;
            (os, true, PathBuf::new(), DataDisk::None)
        } else if req.persistent {
            let udir = self.user_dir(&req.user);
            if !udir.exists() {
                undo.dirs.push(udir.clone());
            }
            images::private_dir(&udir).map_err(crate::error::internal(format!("creating {}", udir.display())))?;
            let own_os = udir.join(format!("os-{}.qcow2", template.name));
            let os_busy = mine.iter().any(|r| Path::new(&r.os_disk) == own_os);
            let (os, temp) = if os_busy { (files.dir.join("os.qcow2"), true) } else { (own_os, false) };
            if !os.exists() {
                images::create_overlay(&self.cfg.qemu_img, &template.disk, &os)?;
                undo.files.push(os.clone());
            }
            let data = udir.join("data.img");
            if images::ensure_data_disk(&self.cfg.mkfs_ext4, &data, self.cfg.data_disk_mib)? {
                undo.files.push(data.clone());
            }
            // Never two writers on one disk: the holder keeps it until its VM ends.
            let held = mine.iter().any(|r| r.data_disk == DataDisk::Attached);
            (os, temp, data, if held { DataDisk::Waiting } else { DataDisk::Attached })
        } else {
            let os = files.dir.join("os.qcow2");
            images::create_overlay(&self.cfg.qemu_img, &template.disk, &os)?;
            let data = files.dir.join("data.img");
            images::create_data_disk(&self.cfg.mkfs_ext4, &data, self.cfg.data_disk_mib)?;
            (os, true, data, DataDisk::Attached)
        };
        let vnc = match &self.cfg.vnc_tcp_host {
            Some(h) if self.cfg.vnc_tls() => Vnc::Tls(h.clone(), qemu::free_vnc_display(h)?, self.cfg.vnc_tls_dir()),
            Some(h) => Vnc::Tcp(h.clone(), qemu::free_vnc_display(h)?),
            None => Vnc::Unix(files.vnc()),
        };
        let launch = Launch {
            qemu: &self.cfg.qemu,
            accel,
            name: &req.name,
            user: &req.user,
            files: &files,
            template,
            os_disk: &os_disk,
            data_disk: (data_disk == DataDisk::Attached).then_some(data.as_path()),
            memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            vnc: &vnc,
        };
        let mut row = VmRow {
            name: req.name.clone(),
            template: template.name.clone(),
            user: req.user.clone(),
            persistent: req.persistent && !req.pool,
            memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            state: VmState::Starting,
            pid: 0,
            vnc: match &vnc {
                Vnc::Unix(p) => format!("unix:{}", p.display()),
                Vnc::Tcp(h, d) => format!("tcp:{h}:{}", 5900 + d),
                Vnc::Tls(h, d, _) => format!("tls:{h}:{}", 5900 + d),
            },
            data_disk,
            os_disk: os_disk.to_string_lossy().into_owned(),
            os_temporary,
            created_at: secs_now(),
        };
        // The row goes in before QEMU starts: if this process dies from here on, the next
        // start finds a `starting` VM and ends it, instead of a QEMU nobody knows that holds
        // the user's disks.
        self.store().insert_vm(&row)?;
        undo.row = Some(row.name.clone());
        undo.qmp = Some(files.qmp());
        let pid = qemu::spawn(&launch)?;
        self.store().set_pid(&row.name, pid)?;
        let (svc, mut events) = qmp::connect(&files.qmp()).await?;
        let password = req.vnc_password.clone().unwrap_or_else(random_password);
        let set = qapi::qmp::change_vnc_password { password: password.clone() };
        qmp::exec_early(&svc, &mut events, &req.name, set).await?;
        self.store().set_state(&row.name, VmState::Running)?;
        (row.pid, row.state) = (pid, VmState::Running);
        self.watch(row.clone(), svc, events);
        let detail = format!(
            "{} MiB, {} vCPU, {:?}, template {}, data disk {:?}",
            row.memory_mib, row.vcpus, accel, row.template, row.data_disk
        );
        let _ = self.emit(EventKind::Created, Some(&row.name), Some(&row.user), Some(row.memory_mib << 20), &detail);
        *undo = Undo::default();
        Ok(CreatedVm { vm: self.info(&row).await, vnc_password: password })
    }

    /// Watches one VM's QMP stream; when it closes, the VM has ended.
    fn watch(self: &Arc<Self>, row: VmRow, svc: qmp::Service, mut events: qmp::Events) {
        let stop = Arc::new(AtomicBool::new(row.state == VmState::Stopping));
        let (tx, rx) = watch::channel(None);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.name.clone(), Live { qmp: Arc::new(svc), stop_requested: stop.clone(), ended: rx });
        let me = self.clone();
        tokio::spawn(async move {
            let mut shutdown = None;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(qapi::qmp::Event::SHUTDOWN { data, .. }) => {
                        log::info!("VM {}: SHUTDOWN ({:?})", row.name, data.reason);
                        shutdown = Some(format!("{:?}", data.reason));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("VM {}: QMP stream: {e}", row.name);
                        break;
                    }
                }
            }
            let (kind, detail) = match (shutdown, stop.load(Ordering::SeqCst)) {
                (_, true) => (EventKind::Stopped, "stopped on request".to_string()),
                (Some(r), false) => (EventKind::Stopped, format!("the guest powered off ({r})")),
                (None, false) => (EventKind::Crashed, format!("QEMU (PID {}) went away without a shutdown", row.pid)),
            };
            let ev = me.finish(&row, kind, &detail).await;
            let _ = tx.send(ev);
        });
    }

    /// The end of a VM: make sure QEMU is gone, drop what was only its own, record why, and
    /// give the user's data disk to a VM that waits for it.
    async fn finish(self: &Arc<Self>, row: &VmRow, kind: EventKind, detail: &str) -> Option<Event> {
        let qmp_path = self.files(&row.name).qmp();
        for i in 0..100 {
            if !qemu::alive(row.pid, &qmp_path) {
                break;
            }
            if i == 50 {
                log::warn!("VM {}: QEMU PID {} still there after its QMP closed; killing it", row.name, row.pid);
                qemu::kill(row.pid);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ops = self.ops.lock().await;
        // The row as it is now, not as it was at the start: a pool VM given to a user since then
        // holds that user's data disk, which must go on to the user's waiting VM.
        let current = self.row(&row.name).ok();
        let row = current.as_ref().unwrap_or(row);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&row.name);
        if let Err(e) = self.store().delete_vm(&row.name) {
            log::error!("VM {}: {e}", row.name);
        }
        // One-time disks and throwaway overlays live in the VM folder; the user's own disks don't.
        let dir = self.files(&row.name).dir;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            log::warn!("removing {}: {e}", dir.display());
        }
        let ev = self.emit(kind, Some(&row.name), Some(&row.user), None, detail).ok();
        if row.persistent && row.data_disk == DataDisk::Attached {
            self.hand_over_data_disk(&row.user).await;
        }
        ev
    }

    /// Gives a pool VM to `user` and answers at once: the person is waiting for this desktop.
    /// Who holds the user's data disk is decided here, under the ops lock, so that no other VM
    /// of the user can take it meanwhile; making the disk (a new user's `mkfs`), hot-plugging
    /// it and telling the guest its user follow in the background ([`Self::attach_assigned`]),
    /// without waiting for a guest that may still be booting.
    pub async fn assign(self: &Arc<Self>, name: &str, user: &str) -> Result<VmInfo> {
        if !valid_name(user) {
            return Err(Error::BadRequest(format!("user {user:?} is not a valid name")));
        }
        let (row, attach) = {
            let _ops = self.ops.lock().await;
            let row = self.row(name)?;
            if row.data_disk != DataDisk::None || !row.user.is_empty() {
                return Err(Error::Conflict(format!("VM {name:?} is not a pool VM (user {:?})", row.user)));
            }
            if self.live_qmp(name).is_none() {
                return Err(Error::Conflict(format!("VM {name:?} is ending")));
            }
            let rows = self.store().vms()?;
            // Never two writers on one disk: the holder keeps it until its VM ends.
            let held = rows.iter().any(|r| r.user == user && r.persistent && r.data_disk == DataDisk::Attached);
            let disk = if held { DataDisk::Waiting } else { DataDisk::Attached };
            self.store().assign(name, user, disk)?;
            let detail = if held { "data disk waiting for the user's other VM" } else { "data disk being attached" };
            let _ = self.emit(EventKind::Assigned, Some(name), Some(user), None, detail);
            (self.row(name)?, !held)
        };
        let me = self.clone();
        let (vm, who) = (name.to_string(), user.to_string());
        tokio::spawn(async move {
            if attach {
                me.attach_assigned(&vm, &who).await;
            }
            me.tell_guest_user(&vm, &who).await;
        });
        Ok(self.info(&row).await)
    }

    /// Hot-plugs `user`'s data disk into the pool VM `name` just given to them, if the VM is
    /// still theirs and still the disk's holder (it may have ended meanwhile and the disk gone
    /// on to the user's next VM). A failure leaves the VM the holder, so that the disk goes on
    /// to a waiting VM of the user when this one ends, as at a handoff.
    async fn attach_assigned(&self, name: &str, user: &str) {
        let _ops = self.ops.lock().await;
        let Ok(row) = self.row(name) else { return };
        if row.user != user || row.data_disk != DataDisk::Attached {
            return;
        }
        let Some(q) = self.live_qmp(name) else { return };
        let udir = self.user_dir(user);
        let data = udir.join("data.img");
        let r = async {
            images::private_dir(&udir).map_err(crate::error::internal(format!("creating {}", udir.display())))?;
            images::ensure_data_disk(&self.cfg.mkfs_ext4, &data, self.cfg.data_disk_mib)?;
            for line in qemu::data_disk_hotplug(&data) {
                qmp::hmp(&q, name, &line).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        match r {
            Ok(()) => {
                let _ = self.emit(EventKind::DataDiskAttached, Some(name), Some(user), None, "given with the pool VM");
            }
            Err(e) => log::error!("VM {name}: attaching the data disk of {user}: {e}; the desktop runs without it"),
        }
    }

    /// Sends `tc-assign USER` to the guest's serial shell, once the guest says it is ready
    /// (a line sent while the kernel sets up the UART can be lost).
    async fn tell_guest_user(&self, name: &str, user: &str) {
        use tokio::io::AsyncWriteExt;
        let files = self.files(name);
        let log = files.dir.join("console.log");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if std::fs::read(&log).is_ok_and(|b| b.windows(8).any(|w| w == b"TC-READY")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut s = match tokio::net::UnixStream::connect(files.console()).await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("VM {name}: telling the guest its user {user} on {}: {e}", files.console().display());
                return;
            }
        };
        if let Err(e) = s.write_all(format!("tc-assign {user}\n").as_bytes()).await {
            log::warn!("VM {name}: telling the guest its user {user}: {e}");
            return;
        }
        // QEMU feeds the UART a few bytes at a time and drops what is still unread when the
        // connection closes: keep it open until the guest answers, or for ten seconds.
        let done = format!("TC-ASSIGNED user={user}");
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if std::fs::read(&log).is_ok_and(|b| b.windows(done.len()).any(|w| w == done.as_bytes())) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(s);
        });
    }

    async fn hand_over_data_disk(&self, user: &str) {
        let Ok(rows) = self.store().vms() else { return };
        let Some(next) = rows.iter().find(|r| r.user == user && r.persistent && r.data_disk == DataDisk::Waiting) else {
            return;
        };
        let Some(q) = self.live_qmp(&next.name) else { return };
        let data = self.user_dir(user).join("data.img");
        for line in qemu::data_disk_hotplug(&data) {
            if let Err(e) = qmp::hmp(&q, &next.name, &line).await {
                log::error!("handing the data disk of {user} to VM {}: {e}", next.name);
                return;
            }
        }
        if let Err(e) = self.store().set_data_disk(&next.name, DataDisk::Attached) {
            log::error!("VM {}: {e}", next.name);
        }
        let _ = self.emit(EventKind::DataDiskAttached, Some(&next.name), Some(user), None, "the previous holder released it");
    }

    async fn adopt_all(self: &Arc<Self>) {
        let rows = match self.store().vms() {
            Ok(r) => r,
            Err(e) => {
                log::error!("listing VMs to adopt: {e}");
                return;
            }
        };
        self.sweep_vm_dirs(&rows).await;
        for row in rows {
            let qmp_path = self.files(&row.name).qmp();
            if row.state == VmState::Starting {
                // Its create request never got an answer, so nobody has its VNC password and
                // nobody will use it: end it, whatever stage QEMU reached (none, daemonizing,
                // running), and give back what it held.
                let gone = qemu::kill_all(&qmp_path).await;
                if !gone {
                    log::error!("VM {}: a QEMU of its unfinished start would not die; its row stays", row.name);
                    continue;
                }
                self.finish(&row, EventKind::Crashed, "its start was interrupted (server-host stopped while QEMU was starting); ended")
                    .await;
                continue;
            }
            let adopted = if qemu::alive(row.pid, &qmp_path) {
                match qmp::connect(&qmp_path).await {
                    Ok((svc, events)) => {
                        self.watch(row.clone(), svc, events);
                        let _ = self.emit(EventKind::Adopted, Some(&row.name), Some(&row.user), None, &format!("QEMU PID {}", row.pid));
                        true
                    }
                    Err(e) => {
                        log::error!("VM {}: cannot adopt: {e}", row.name);
                        false
                    }
                }
            } else {
                false
            };
            if !adopted {
                let me = self.clone();
                let kind = if row.state == VmState::Stopping { EventKind::Stopped } else { EventKind::Crashed };
                me.finish(&row, kind, "ended while server-host was not watching").await;
            }
        }
    }

    /// Folders in `vms/` that no row names are left by a create that failed before its row was
    /// stored: nothing in them is of any use. A QEMU is never started before that row now, but
    /// an older version could leave one running on such a folder, holding a user's disks.
    async fn sweep_vm_dirs(&self, rows: &[VmRow]) {
        let Ok(rd) = std::fs::read_dir(self.cfg.state_dir.join("vms")) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if rows.iter().any(|r| r.name == name) {
                continue;
            }
            log::warn!("VM folder {} belongs to no VM (a create was interrupted); removing it", e.path().display());
            if !qemu::kill_all(&self.files(&name).qmp()).await {
                log::error!("a QEMU of {} would not die; folder kept", e.path().display());
                continue;
            }
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                log::warn!("removing {}: {err}", e.path().display());
            }
        }
    }

    /// Graceful stop (ACPI power button) with a deadline, then forced.
    pub async fn stop(&self, name: &str, deadline: Duration) -> Result<Event> {
        let row = self.row(name)?;
        if row.state == VmState::Starting {
            return Err(Error::Conflict(format!("VM {name:?} is still starting")));
        }
        let (qmp, stop, mut ended) = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let l = live.get(name).ok_or_else(|| Error::Conflict(format!("VM {name:?} is already ending")))?;
            (l.qmp.clone(), l.stop_requested.clone(), l.ended.clone())
        };
        stop.store(true, Ordering::SeqCst);
        self.store().set_state(name, VmState::Stopping)?;
        if !deadline.is_zero() {
            if let Err(e) = qmp::exec(&qmp, name, qapi::qmp::system_powerdown {}).await {
                log::warn!("{e}");
            }
            if let Ok(Ok(v)) = tokio::time::timeout(deadline, ended.wait_for(|e| e.is_some())).await {
                return v.clone().ok_or_else(|| Error::Internal("no end event".into()));
            }
            log::info!("VM {name}: not off after {deadline:?}; forcing");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), qmp::exec(&qmp, name, qapi::qmp::quit {})).await;
        if tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|e| e.is_some())).await.is_err() {
            if qemu::alive(row.pid, &self.files(name).qmp()) {
                qemu::kill(row.pid);
            }
        }
        let r = match tokio::time::timeout(Duration::from_secs(30), ended.wait_for(|e| e.is_some())).await {
            Ok(Ok(v)) => v.clone().ok_or_else(|| Error::Internal("no end event".into())),
            _ => Err(Error::Internal(format!("VM {name}: QEMU PID {} would not end", row.pid))),
        };
        r
    }

    pub async fn balloon(&self, name: &str, mib: u64) -> Result<VmInfo> {
        let row = self.row(name)?;
        if mib < 32 || mib > row.memory_mib {
            return Err(Error::BadRequest(format!("balloon size must be 32..={} MiB (the boot size), not {mib}", row.memory_mib)));
        }
        let q = self.live_qmp(name).ok_or_else(|| Error::Conflict(format!("VM {name:?} is ending")))?;
        qmp::exec(&q, name, qapi::qmp::balloon { value: (mib << 20) as i64 }).await?;
        let _ = self.emit(EventKind::Ballooned, Some(name), Some(&row.user), Some(mib << 20), &format!("target {mib} MiB"));
        Ok(self.info(&row).await)
    }

    pub async fn set_vnc_password(&self, name: &str, password: &str) -> Result<()> {
        if password.is_empty() || password.len() > VNC_PASSWORD_MAX {
            return Err(Error::BadRequest(format!("password must be 1..={VNC_PASSWORD_MAX} bytes")));
        }
        self.row(name)?;
        let q = self.live_qmp(name).ok_or_else(|| Error::Conflict(format!("VM {name:?} is ending")))?;
        qmp::exec(&q, name, qapi::qmp::change_vnc_password { password: password.to_owned() }).await?;
        Ok(())
    }

    /// The VM's screen as PPM or PNG bytes.
    pub async fn screen(&self, name: &str, png: bool) -> Result<Vec<u8>> {
        self.row(name)?;
        let q = self.live_qmp(name).ok_or_else(|| Error::Conflict(format!("VM {name:?} is ending")))?;
        let file = self.files(name).dir.join(format!("screen-{}.{}", random_password(), if png { "png" } else { "ppm" }));
        let format = Some(if png { qapi::qmp::ImageFormat::png } else { qapi::qmp::ImageFormat::ppm });
        let r = qmp::exec(&q, name, qapi::qmp::screendump { device: None, head: None, format, filename: file.to_string_lossy().into() }).await;
        let bytes = r.and_then(|_| std::fs::read(&file).map_err(crate::error::internal(format!("reading {}", file.display()))));
        let _ = std::fs::remove_file(&file);
        bytes
    }

    fn user_idle(&self, user: &str) -> Result<()> {
        if !valid_name(user) {
            return Err(Error::BadRequest(format!("user {user:?} is not a valid name")));
        }
        let running: Vec<String> = self.store().vms()?.into_iter().filter(|r| r.user == user).map(|r| r.name).collect();
        if !running.is_empty() {
            return Err(Error::Conflict(format!("user {user} has running VMs ({}); stop them first", running.join(", "))));
        }
        Ok(())
    }

    /// The user's own images: data disk first, then OS overlays.
    fn user_images(&self, user: &str) -> Vec<PathBuf> {
        let dir = self.user_dir(user);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file() && !images::is_temp(p)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub async fn user(&self, user: &str) -> Result<UserInfo> {
        if !valid_name(user) {
            return Err(Error::BadRequest(format!("user {user:?} is not a valid name")));
        }
        let dir = self.user_dir(user);
        let data = dir.join("data.img");
        let os_overlays = self
            .user_images(user)
            .into_iter()
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?;
                let t = n.strip_prefix("os-")?.strip_suffix(".qcow2")?;
                Some((t.to_owned(), images::allocated(&p)))
            })
            .collect();
        let backups = self.store().backups(user)?.into_iter().map(|(id, at, size, _)| BackupInfo { id, at, size }).collect();
        let vms = self.store().vms()?.into_iter().filter(|r| r.user == user).map(|r| r.name).collect();
        Ok(UserInfo {
            user: user.to_owned(),
            data_disk_size: data.exists().then(|| images::allocated(&data)),
            os_overlays,
            backups,
            vms,
        })
    }

    /// Throws away the user's OS overlays and data disk; the next VM starts from the template.
    pub async fn reset(&self, user: &str) -> Result<Event> {
        let _ops = self.ops.lock().await;
        self.user_idle(user)?;
        let imgs = self.user_images(user);
        let size: u64 = imgs.iter().map(|p| images::allocated(p)).sum();
        for p in &imgs {
            std::fs::remove_file(p).map_err(crate::error::internal(format!("removing {}", p.display())))?;
        }
        self.emit(EventKind::Reset, None, Some(user), Some(size), &format!("removed {} image(s)", imgs.len()))
    }

    pub async fn backup(&self, user: &str) -> Result<Event> {
        let _ops = self.ops.lock().await;
        self.user_idle(user)?;
        let imgs = self.user_images(user);
        if imgs.is_empty() {
            return Err(Error::Conflict(format!("user {user} has no images to back up")));
        }
        let at = now_ms();
        let dir = self.cfg.state_dir.join("backups").join(user).join(at.to_string());
        images::private_dir(&dir).map_err(crate::error::internal(format!("creating {}", dir.display())))?;
        for p in &imgs {
            if let Err(e) = images::sparse_copy(p, &dir.join(p.file_name().unwrap_or_default())) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        let size = images::allocated_tree(&dir);
        let id = self.store().add_backup(user, at / 1000, size, &dir.to_string_lossy())?;
        self.emit(EventKind::Backup, None, Some(user), Some(size), &format!("backup {id}: {} image(s)", imgs.len()))
    }

    pub async fn restore(&self, user: &str, id: i64) -> Result<Event> {
        let _ops = self.ops.lock().await;
        self.user_idle(user)?;
        let (owner, dir) = self.store().backup(id)?.ok_or_else(|| Error::NotFound(format!("no backup {id}")))?;
        if owner != user {
            return Err(Error::NotFound(format!("backup {id} is not one of user {user}'s")));
        }
        let udir = self.user_dir(user);
        images::private_dir(&udir).map_err(crate::error::internal(format!("creating {}", udir.display())))?;
        let rd = std::fs::read_dir(&dir).map_err(crate::error::internal(format!("reading backup {dir}")))?;
        let mut names: Vec<std::ffi::OsString> = rd.flatten().map(|e| e.file_name()).filter(|n| !images::is_temp(Path::new(n))).collect();
        names.sort();
        // Every image is copied beside the current ones first; only when all copies are
        // made do they replace them (each by a rename), so a failed restore (a full disk, a
        // damaged backup) leaves the user's images as they were.
        let mut staged = Vec::new();
        for n in &names {
            match images::stage_copy(&Path::new(&dir).join(n), &udir.join(n)) {
                Ok(tmp) => staged.push((tmp, udir.join(n))),
                Err(e) => {
                    for (tmp, _) in &staged {
                        let _ = std::fs::remove_file(tmp);
                    }
                    return Err(e);
                }
            }
        }
        for (tmp, to) in &staged {
            images::commit(tmp, to)?;
        }
        for p in self.user_images(user) {
            if !names.iter().any(|n| p.file_name() == Some(n.as_os_str())) {
                std::fs::remove_file(&p).map_err(crate::error::internal(format!("removing {}", p.display())))?;
            }
        }
        let size = images::allocated_tree(&udir);
        self.emit(EventKind::Restore, None, Some(user), Some(size), &format!("restored backup {id}"))
    }
}

/// What a failed create must take back.
#[derive(Default)]
struct Undo {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// The QMP socket of the QEMU being launched: whatever process names it is killed (the PID
    /// may not be known yet when the launch fails half-way).
    qmp: Option<PathBuf>,
    /// The `starting` row.
    row: Option<String>,
}

impl Undo {
    fn run(&mut self, m: &Manager) {
        if let Some(marker) = self.qmp.take() {
            for pid in qemu::pids_naming(&marker) {
                qemu::kill(pid);
            }
        }
        if let Some(name) = self.row.take() {
            if let Err(e) = m.store().delete_vm(&name) {
                log::error!("VM {name}: removing the row of a failed create: {e}");
            }
        }
        for f in self.files.drain(..) {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// At start-up: removes the temporary copies a crash left in users' folders and makes users'
/// folders and images owner-only (older versions made them readable by everyone).
fn tidy_users(users: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(users) else { return };
    for u in rd.flatten().filter(|e| e.path().is_dir()) {
        if let Err(e) = images::private_dir(&u.path()) {
            log::warn!("securing {}: {e}", u.path().display());
        }
        for f in std::fs::read_dir(u.path()).into_iter().flatten().flatten() {
            let p = f.path();
            if !f.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let r = if images::is_temp(&p) {
                log::info!("removing {}, left by an interrupted copy", p.display());
                std::fs::remove_file(&p)
            } else {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            };
            if let Err(e) = r {
                log::warn!("{}: {e}", p.display());
            }
        }
    }
}

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut r = rand::thread_rng();
    (0..VNC_PASSWORD_MAX).map(|_| CHARS[r.gen_range(0..CHARS.len())] as char).collect()
}

/// (MemTotal, MemAvailable) in MiB.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            >> 10
    };
    (get("MemTotal:"), get("MemAvailable:"))
}
