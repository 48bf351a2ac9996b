//! Broker restart: the stored sessions come back, checked against what the hosts really run.
//!
//! At start every stored session is put back as it was (planner state at its level on its
//! host, desktop, the hash of its proxy token and VM backend): a viewer that presents the
//! whole token still gets in, and the PC's re-announce gets the same desktop with a new token
//! (the store never held the old one, and VNC authentication needs it in clear). Each host is then asked for its VMs
//! (`GET /v1/vms`): a session whose VM runs is adopted, one whose VM is gone is dropped (its
//! user gets a fresh VM on the next announce), and a VM of the broker's naming that no session
//! claims is stopped, so that the memory accounting says what really runs. A host that does not
//! answer keeps its sessions pending (they still hold their memory) and is asked again every
//! health interval; if it is declared down meanwhile, the usual host-down path moves its users,
//! and once it answers again its leftover VMs are stopped as unclaimed. Every decision is
//! logged and kept with the admin API's decisions.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use proto::host::{VmInfo, VmState};

use super::*;
use crate::broker::memory::UserState;
use crate::broker::sessions::{SessionStore, StoredSession};

/// Longest wait for a host's VM list: the check runs under the event lock.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Recovery {
    store: OnceLock<SessionStore>,
    /// Hosts whose VMs have not yet been checked against the restored sessions.
    pending: Mutex<BTreeSet<String>>,
}

/// Whether `vm` has the name [`Orchestrator::create_vm`] gives: the host-side user name, a
/// dash and digits. VMs named otherwise (made by hand or by another tool) are left alone.
/// The pool's VMs (`pool-HOST-DIGITS`, see `broker::pool`) count too, given to a user or not: a
/// restarted broker starts with an empty pool and refills it, so the old ones only hold memory.
fn made_by_broker(vm: &VmInfo) -> bool {
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    let users = vm.name.strip_prefix(vm.user.as_str()).and_then(|rest| rest.strip_prefix('-')).is_some_and(digits);
    let pool = vm.name.strip_prefix("pool-").and_then(|rest| rest.rsplit_once('-')).is_some_and(|(h, d)| !h.is_empty() && digits(d));
    users || pool
}

fn step(action: String, result: Result<serde_json::Value, String>, t0: Instant) -> Step {
    let ms = t0.elapsed().as_millis() as u64;
    match result {
        Ok(detail) => {
            log::info!("broker: recovery: {action}");
            Step { action, ok: true, error: None, ms, detail }
        }
        Err(e) => {
            log::warn!("broker: recovery: {action}: {e}");
            Step { action, ok: false, error: Some(e), ms, detail: json!({}) }
        }
    }
}

impl Orchestrator {
    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.recovery.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, event: Event, summary: String, steps: Vec<Step>) {
        log::info!("broker: {summary}");
        let decision = Decision { event, summary, actions: Vec::new() };
        self.keep_record(DecisionRecord { at_ms: now_ms(), decision, steps });
    }

    /// Writes the user's session as it is now to the store, or removes it when the user has
    /// no desktop any more.
    pub(super) fn persist(&self, user: &str) {
        let Some(store) = self.recovery.store.get() else { return };
        let row = {
            let v = self.view();
            v.desktops.get(user).map(|d| StoredSession {
                user: d.user.clone(),
                host: d.host.clone(),
                vm: d.vm.clone(),
                level: d.level,
                memory_mib: d.memory_mib,
                token_hash: crate::broker::proxy::auth::hash_hex(&d.token_hash),
                vnc: d.backend.addr.to_string(),
                vnc_password: d.backend.password.clone(),
                arrived: v.state.user(user).map_or(0, |u| u.arrived),
                since: d.since,
                template: Some(d.template.clone()),
                one_time: d.one_time,
            })
        };
        let res = match row {
            Some(row) => store.put(&row),
            None => store.delete(user),
        };
        if let Err(e) = res {
            log::error!("broker: {e}");
        }
    }

    /// Takes the store into use and puts its sessions back, then checks every host once.
    /// Returns the users whose sessions came back (their PCs are expected to reconnect).
    pub async fn recover(&self, store: SessionStore) -> anyhow::Result<Vec<String>> {
        let rows = store.all()?;
        let mut restored = Vec::new();
        {
            let _one = self.run_lock.lock().await;
            let mut steps = Vec::new();
            for row in &rows {
                let t0 = Instant::now();
                let what = format!("restore {}: VM {} on {} at level {}", row.user, row.vm, row.host, row.level);
                let res = self.restore(row);
                if res.is_ok() {
                    restored.push(row.user.clone());
                } else if let Err(e) = store.delete(&row.user) {
                    log::error!("broker: {e}");
                }
                steps.push(step(what, res.map(|()| json!({ "token_hash_kept": true })), t0));
            }
            if self.recovery.store.set(store).is_err() {
                bail!("the session store is already in use");
            }
            self.pending().extend(self.view().state.hosts.iter().map(|h| h.id.clone()));
            let summary = format!(
                "broker restart: {} of {} stored sessions restored, pending a check of their hosts",
                restored.len(),
                rows.len()
            );
            self.record(Event::Recovered { host: "*".into() }, summary, steps);
        }
        self.check_pending().await;
        Ok(restored)
    }

    /// Puts one stored session back into the state, the desktops and the proxy.
    fn restore(&self, row: &StoredSession) -> Result<(), String> {
        let levels = &self.planner.levels;
        let mut v = self.view();
        if v.state.host(&row.host).is_none() {
            return Err(format!("host {} is no longer configured", row.host));
        }
        let level = if levels.get(row.level) == Some(row.memory_mib << 20) {
            row.level
        } else {
            // The levels changed since: keep the session if its memory is still a level.
            levels
                .sizes()
                .iter()
                .position(|&b| b == row.memory_mib << 20)
                .ok_or_else(|| format!("{} MiB is none of the configured levels", row.memory_mib))?
        };
        let bytes = row.memory_mib << 20;
        let (used, capacity) = (v.state.used(levels, &row.host), v.state.host(&row.host).map_or(0, |h| h.capacity));
        if used + bytes > capacity {
            return Err(format!("host {} has no room left for it (its memory_mib changed?)", row.host));
        }
        let addr: VncAddr = row.vnc.parse()?;
        let token_hash = crate::broker::proxy::auth::parse_hash(&row.token_hash)
            .ok_or_else(|| "its token hash is unreadable".to_string())?;
        let backend = Backend { addr, password: row.vnc_password.clone() };
        v.state.users.push(UserState { id: row.user.clone(), host: row.host.clone(), level, arrived: row.arrived });
        self.proxy.restore_session(&row.user, token_hash, backend.clone());
        let d = Desktop {
            user: row.user.clone(),
            host: row.host.clone(),
            vm: row.vm.clone(),
            level,
            memory_mib: row.memory_mib,
            vnc: backend.describe(),
            template: row.template.clone().unwrap_or_else(|| self.cfg.template.clone()),
            one_time: row.one_time,
            token_hash,
            backend,
            since: row.since,
        };
        v.desktops.insert(row.user.clone(), d);
        Ok(())
    }

    /// Asks every host still pending for its VMs and settles the sessions of those that
    /// answer. Returns how many hosts are still pending.
    pub async fn check_pending(&self) -> usize {
        let hosts: Vec<String> = self.pending().iter().cloned().collect();
        for host in hosts {
            let _one = self.run_lock.lock().await;
            let Some(client) = self.hosts.client(&host) else {
                self.pending().remove(&host);
                continue;
            };
            let vms = match tokio::time::timeout(LIST_TIMEOUT, client.vms()).await {
                Ok(Ok(vms)) => vms,
                Ok(Err(e)) => {
                    log::warn!("broker: recovery: {e}; the sessions on {host} stay pending");
                    continue;
                }
                Err(_) => {
                    log::warn!("broker: recovery: host {host} lists no VMs within {LIST_TIMEOUT:?}; its sessions stay pending");
                    continue;
                }
            };
            self.pending().remove(&host);
            if let Err(e) = self.settle(&host, &vms).await {
                log::error!("broker: recovery of {host}: {e:#}");
            }
        }
        self.pending().len()
    }

    /// Follows up on hosts that did not answer at start, every `every`, until none is left.
    pub async fn follow_pending(self: Arc<Self>, every: Duration) {
        while !self.pending().is_empty() {
            tokio::time::sleep(every).await;
            self.check_pending().await;
        }
    }

    /// Adopts, drops and stops on `host` given its VM list. Runs under the event lock.
    async fn settle(&self, host: &str, vms: &[VmInfo]) -> anyhow::Result<()> {
        let mut steps = Vec::new();
        let claimed: Vec<Desktop> = self.view().desktops.values().filter(|d| d.host == host).cloned().collect();
        let (mut adopted, mut dropped, mut stopped) = (0, 0, 0);
        for d in &claimed {
            let t0 = Instant::now();
            let running = vms.iter().find(|vm| vm.name == d.vm && vm.state == VmState::Running);
            match running {
                Some(vm) => {
                    adopted += 1;
                    // The host's word on where the VM's VNC server is beats the stored one.
                    let now = backend_of(&vm.vnc, d.backend.password.as_deref().unwrap_or_default());
                    if let Ok(backend) = now.map(|b| Backend { password: d.backend.password.clone(), ..b }) {
                        if backend != d.backend {
                            self.proxy.restore_session(&d.user, d.token_hash, backend.clone());
                            if let Some(mine) = self.view().desktops.get_mut(&d.user) {
                                mine.vnc = backend.describe();
                                mine.backend = backend;
                            }
                            self.persist(&d.user);
                        }
                    }
                    let what = format!("adopt {}: VM {} runs on {host} at level {} ({} MiB)", d.user, d.vm, d.level, d.memory_mib);
                    steps.push(step(what, Ok(json!({ "vm": d.vm, "user": d.user })), t0));
                }
                None => {
                    dropped += 1;
                    {
                        let mut v = self.view();
                        v.desktops.remove(&d.user);
                        v.state.users.retain(|u| u.id != d.user);
                    }
                    self.proxy.close_session(&d.user);
                    self.persist(&d.user);
                    if d.one_time {
                        // Its VM ended while the broker was away; the disks are still there.
                        if let Err(e) = self.discard(&d.user, host).await {
                            log::error!("broker: recovery: {e:#}; they go before the next start");
                        }
                    }
                    let what = format!(
                        "drop {}: VM {} no longer runs on {host}; a new desktop starts at the next announce",
                        d.user, d.vm
                    );
                    steps.push(step(what, Ok(json!({ "vm": d.vm, "user": d.user })), t0));
                }
            }
        }
        let client = self.hosts.client(host).context("host vanished")?;
        for vm in vms {
            let ours = self.view().desktops.values().any(|d| d.host == host && d.vm == vm.name);
            if ours || vm.state != VmState::Running {
                continue;
            }
            let t0 = Instant::now();
            if !made_by_broker(vm) {
                log::info!("broker: recovery: VM {} on {host} is not of the broker's naming; left alone", vm.name);
                continue;
            }
            stopped += 1;
            // In the background: a guest that ignores the power button holds the event lock
            // (and so every announce) for the whole stop deadline otherwise. Its name is never
            // used again, so nothing can race with the stop.
            let (c, name, deadline) = (client.clone(), vm.name.clone(), self.cfg.stop_deadline_secs);
            let one_time = one_time_host_user(&vm.user).then(|| vm.user.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                match c.stop(&name, deadline).await {
                    Ok(_) => log::info!("broker: recovery: unclaimed VM {name} stopped in {:?}", t0.elapsed()),
                    Err(e) => log::error!("broker: recovery: stopping unclaimed VM {name}: {e}"),
                }
                if let Some(owner) = one_time {
                    if let Err(e) = c.reset(&owner).await {
                        log::error!("broker: recovery: throwing away the one-time disks of {owner}: {e}");
                    }
                }
            });
            let what = format!("stop VM {} on {host} ({} MiB): no session claims it", vm.name, vm.memory_mib);
            steps.push(step(what, Ok(json!({ "vm": vm.name, "memory_mib": vm.memory_mib })), t0));
        }
        let summary = format!(
            "broker restart: host {host} checked: {adopted} adopted, {dropped} dropped, {stopped} unclaimed VMs stopped"
        );
        self.record(Event::Recovered { host: host.to_string() }, summary, steps);
        if dropped > 0 {
            // Memory came free: the planner may let the others grow back.
            self.run(Event::Recovered { host: host.to_string() }).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, user: &str) -> VmInfo {
        serde_json::from_value(json!({
            "name": name, "template": "desktop", "user": user, "persistent": true,
            "memory_mib": 128, "balloon_mib": null, "vcpus": 1, "state": "running", "pid": 1,
            "vnc": { "tcp": "127.0.0.1:5901" }, "data_disk": "attached",
            "os_overlay_temporary": false, "created_at": 0
        }))
        .unwrap()
    }

    fn stored(user: &str, memory_mib: u64, arrived: u64) -> StoredSession {
        StoredSession {
            user: user.into(),
            host: "h1".into(),
            vm: format!("{}-1", host_user_name(user)),
            level: 0,
            memory_mib,
            token_hash: crate::broker::proxy::auth::hash_hex(&token_hash(&format!("tok{arrived}abc"))),
            vnc: "127.0.0.1:5901".into(),
            vnc_password: Some("pw".into()),
            arrived,
            since: 1,
            template: None,
            one_time: false,
        }
    }

    /// A host that does not answer (nothing listens on its port): its sessions come back
    /// pending, hold their memory and their token hashes (the whole old token still opens the
    /// session, until the PC's announce rotates it); rows that no longer fit the config are
    /// dropped from the store.
    #[tokio::test]
    async fn sessions_on_a_silent_host_stay_pending_with_their_token_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite");
        let store = SessionStore::open(&path).unwrap();
        store.put(&stored("aa", 256, 0)).unwrap();
        store.put(&stored("bb", 100, 1)).unwrap();
        store.put(&StoredSession { host: "gone".into(), ..stored("cc", 256, 2) }).unwrap();
        drop(store);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = BrokerConfig {
            levels_mib: vec![256, 128],
            hosts: vec![crate::broker::settings::HostConfig {
                name: "h1".into(),
                url: format!("https://127.0.0.1:{closed}"),
                memory_mib: 512,
            }],
            ..Default::default()
        };
        let tls = crate::broker::flow::host_tls(dir.path()).unwrap();
        let hosts = HostRegistry::new(&cfg.hosts, tls, cfg.health_interval(), cfg.health_failures).unwrap();
        let proxy = crate::broker::proxy::Proxy::new(Default::default());
        let (orch, _notices) = Orchestrator::new(cfg, hosts, proxy.clone(), "127.0.0.1:5900".parse().unwrap()).unwrap();
        let back = orch.recover(SessionStore::open(&path).unwrap()).await.unwrap();
        assert_eq!(back, vec!["aa".to_string()]);
        assert_eq!(orch.check_pending().await, 1, "h1 stays pending");
        assert_eq!(orch.overview().state.users.len(), 1);
        assert_eq!(orch.desktops()[0].vm, stored("aa", 256, 0).vm);
        assert_eq!(proxy.sessions().len(), 1);
        assert_eq!(proxy.authenticate_token("tok0abc").map(|(id, ..)| id).as_deref(), Some("aa"));
        assert!(proxy.authenticate_token("tok1abc").is_none());
        let Outcome::Assigned { proxy: at, token } = orch.arrive("aa").await.unwrap() else { panic!("not assigned") };
        assert_eq!(at, "127.0.0.1:5900".parse().unwrap());
        assert_ne!(token, "tok0abc", "the re-announce rotates the token");
        assert!(proxy.authenticate_token("tok0abc").is_none(), "the old token still opens the session");
        assert!(proxy.authenticate_token(&token).is_some());
        let kept = SessionStore::open(&path).unwrap().all().unwrap();
        assert_eq!(kept.iter().map(|s| s.user.as_str()).collect::<Vec<_>>(), vec!["aa"]);
        assert_eq!(kept[0].token_hash, crate::broker::proxy::auth::hash_hex(&token_hash(&token)), "the store has the new hash");
        let decisions = orch.decisions();
        let failed: Vec<&str> =
            decisions[0].steps.iter().filter(|s| !s.ok).map(|s| s.error.as_deref().unwrap_or("")).collect();
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed.iter().any(|e| e.contains("none of the configured levels")));
        assert!(failed.iter().any(|e| e.contains("no longer configured")));
    }

    #[test]
    fn only_vms_of_the_broker_naming_count_as_its_own() {
        let user = host_user_name("52:54:00:AB:cd:01");
        assert!(made_by_broker(&vm(&format!("{user}-12345678"), &user)));
        assert!(!made_by_broker(&vm(&format!("{user}-"), &user)));
        assert!(!made_by_broker(&vm(&format!("{user}-pool"), &user)));
        assert!(!made_by_broker(&vm("office-1", &user)));
        assert!(!made_by_broker(&vm("pool-1", "")));
        assert!(made_by_broker(&vm("pool-h1-12345678", "")));
        assert!(made_by_broker(&vm("pool-h1-12345678", &user)));
        assert!(!made_by_broker(&vm("pool--12", "")));
    }
}
