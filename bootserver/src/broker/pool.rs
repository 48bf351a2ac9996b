//! Pre-booted desktop VMs (`pool = N` in `[desktops]`): an arrival takes a VM whose first
//! frame was already seen instead of waiting for a boot.
//!
//! The memory algorithm does not know about pool VMs, so the pool keeps itself inside what the
//! algorithm allows:
//!
//! * **Where.** Pool VM `k` is booted at the level and on the host that the algorithm would give
//!   the `k`-th next newcomer, and only when that newcomer would need no handoff: the pool is
//!   planned as phantom arrivals on the real state, so the real state plus the pool never goes
//!   over a host's memory and keeps the reserve ([`wanted`]).
//! * **Give way.** Before a decision runs, it is replayed with the pool VMs counted as users;
//!   while a step would not fit or the reserve would be lost, pool VMs are stopped first,
//!   those still booting before ready ones ([`evictions`]).
//! * **Refill.** After every decision the pool is compared with what is wanted now: VMs at a
//!   level or on a host no longer wanted stop, missing ones boot, in the background, one
//!   decision or refill step at a time (both hold the same turn).
//!
//! A pool VM belongs to nobody: it has a throwaway OS overlay and no data disk. Taking it
//! asks its host to assign it (`POST /vms/{name}/assign`), which hot-plugs the user's data
//! disk and tells the guest its user, whose name it shows in the strip on its screen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::host::CreateVm;
use serde::Serialize;

use super::hosts::HostRegistry;
use super::memory::{Action, ApplyError, Event, HostId, Levels, Planner, State, UserState};
use super::orchestrator::{backend_of, host_user_name};
use super::proxy::backend::{prepare, Ready};
use super::proxy::rfb::{self, PixelFormat, ServerFramer, ServerItem};
use super::proxy::Backend;
use super::settings::BrokerConfig;

/// A pre-booted VM as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolVm {
    pub vm: String,
    pub host: HostId,
    pub level: usize,
    pub memory_mib: u64,
    /// Its guest has booted to its desktop (see [`Booted`]): an arrival may take it.
    pub ready: bool,
    /// Milliseconds since the Unix epoch when it was created.
    pub created_ms: u64,
    /// Milliseconds from its creation to its desktop.
    pub boot_ms: Option<u64>,
    #[serde(skip)]
    backend: Option<Backend>,
}

/// Where the pool should have its VMs in `state`: `(host, level)` for each of up to `count`
/// phantom newcomers, each placed by the memory algorithm on the state with the ones before it,
/// stopping at the first that would need a handoff or be refused.
pub fn wanted(planner: &Planner, state: &State, count: usize) -> Vec<(HostId, usize)> {
    let mut s = state.clone();
    let mut out = Vec::new();
    for k in 0..count {
        let user = format!("pool vm {k}");
        let Ok(d) = planner.decide(&s, &Event::Arrive { user: user.clone() }) else { break };
        let [Action::Start { host, level, .. }] = d.actions.as_slice() else { break };
        if s.apply(&planner.levels, &d).is_err() {
            break;
        }
        out.push((host.clone(), *level));
    }
    out
}

/// Which of `have` to stop (indexes) and which `(host, level)` to boot so that the pool
/// becomes `want`. Stops come first, so that boots never need memory a stop frees later.
pub fn reconcile(want: &[(HostId, usize)], have: &[(HostId, usize)]) -> (Vec<usize>, Vec<(HostId, usize)>) {
    let mut missing: Vec<(HostId, usize)> = want.to_vec();
    let mut stop = Vec::new();
    for (i, h) in have.iter().enumerate() {
        match missing.iter().position(|w| w == h) {
            Some(p) => {
                missing.remove(p);
            }
            None => stop.push(i),
        }
    }
    (stop, missing)
}

/// The pool as [`evictions`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub host: HostId,
    pub level: usize,
    pub ready: bool,
}

/// The newcomer `Start` that would take pool VM `held[i]`: a user with no VM yet, at the pool
/// VM's host and level, and the VM is ready.
fn claimable(state: &State, held: &Held, action: &Action) -> bool {
    matches!(action, Action::Start { user, host, level, .. }
        if held.ready && state.user(user).is_none() && *host == held.host && *level == held.level)
}

/// Replays `actions` on `state` with the pool VMs `kept` counted as users (a newcomer's Start
/// takes a matching ready one, as the orchestrator does). `Err(host)` when a step does not fit,
/// with the host that lacks memory, `Err(None)` when the reserve is lost at the end.
fn replay(levels: &Levels, state: &State, held: &[Held], kept: &[bool], actions: &[Action]) -> Result<(), Option<HostId>> {
    let mut s = state.clone();
    let phantom = |i: usize| format!("pool vm {i}");
    let first = s.users.iter().map(|u| u.arrived + 1).max().unwrap_or(0);
    for (i, h) in held.iter().enumerate().filter(|(i, _)| kept[*i]) {
        s.users.push(UserState { id: phantom(i), host: h.host.clone(), level: h.level, arrived: first + i as u64 });
    }
    let mut claimed = vec![false; held.len()];
    for a in actions {
        if let Some(i) = (0..held.len()).find(|&i| kept[i] && !claimed[i] && claimable(state, &held[i], a)) {
            claimed[i] = true;
            s.users.retain(|u| u.id != phantom(i));
        }
        match s.apply_action(levels, a) {
            Ok(()) => {}
            Err(ApplyError::NoRoom { host, .. }) => return Err(Some(host)),
            // Not about memory: the pool cannot help or hurt.
            Err(_) => return Ok(()),
        }
    }
    if s.reserve_kept(levels) {
        Ok(())
    } else {
        Err(None)
    }
}

/// Pool VMs (indexes into `held`) to stop before `actions` run so that every step fits and
/// the reserve is kept. Victims: on the host that lacks memory if one does, then those that
/// no step would take, still booting before ready, larger before smaller.
pub fn evictions(levels: &Levels, state: &State, held: &[Held], actions: &[Action]) -> Vec<usize> {
    let mut kept: Vec<bool> = held.iter().map(|h| state.host(&h.host).is_some_and(|x| x.up)).collect();
    let mut out: Vec<usize> = (0..held.len()).filter(|&i| !kept[i]).collect();
    while let Err(short) = replay(levels, state, held, &kept, actions) {
        let victim = (0..held.len())
            .filter(|&i| kept[i] && short.as_ref().is_none_or(|h| *h == held[i].host))
            .min_by_key(|&i| {
                let taken = actions.iter().any(|a| claimable(state, &held[i], a));
                (taken, held[i].ready, held[i].level)
            });
        let Some(v) = victim else { break };
        kept[v] = false;
        out.push(v);
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The pool's VMs and the background refill.
pub struct Pool {
    size: usize,
    cfg: BrokerConfig,
    planner: Planner,
    hosts: Arc<HostRegistry>,
    vms: Mutex<Vec<PoolVm>>,
    /// Held by a decision from its start to its end and by each refill step: a refill never
    /// plans on a state a decision is changing.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The state after the last decision.
    latest: Mutex<State>,
    refilling: AtomicBool,
    dirty: AtomicBool,
}

impl Pool {
    pub(crate) fn new(cfg: &BrokerConfig, planner: Planner, hosts: Arc<HostRegistry>, state: State) -> Arc<Self> {
        Arc::new(Pool {
            size: cfg.pool,
            cfg: cfg.clone(),
            planner,
            hosts,
            vms: Mutex::new(Vec::new()),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            latest: Mutex::new(state),
            refilling: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
        })
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<PoolVm>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn vms(&self) -> Vec<PoolVm> {
        self.list().clone()
    }

    /// Waits for the pool's turn and stops the pool VMs that `actions` need the memory of.
    /// The decision keeps the returned guard until it is done.
    pub(crate) async fn make_room(&self, state: &State, actions: &[Action]) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = self.turn.clone().lock_owned().await;
        let held: Vec<Held> =
            self.list().iter().map(|p| Held { host: p.host.clone(), level: p.level, ready: p.ready }).collect();
        let mut victims = evictions(&self.planner.levels, state, &held, actions);
        victims.sort_unstable_by(|a, b| b.cmp(a));
        let gone: Vec<PoolVm> = {
            let mut l = self.list();
            victims.iter().map(|&i| l.remove(i)).collect()
        };
        for p in gone {
            let up = state.host(&p.host).is_some_and(|h| h.up);
            log::info!("broker: pool: stopping {} ({} MiB on {}): its memory is needed", p.vm, p.memory_mib, p.host);
            if up {
                self.stop(&p).await;
            }
        }
        turn
    }

    /// Takes the ready pool VM at `host` and `level` for `user` (`host_user` on the host), if
    /// there is one, and gives it to the user on its host. `None` when there is none or the
    /// host would not assign it.
    pub(crate) async fn claim(&self, host: &str, level: usize, user: &str, host_user: &str) -> Option<(String, Backend)> {
        let p = {
            let mut l = self.list();
            let i = l.iter().position(|p| p.ready && p.host == host && p.level == level)?;
            l.remove(i)
        };
        let client = self.hosts.client(host)?;
        let t0 = Instant::now();
        match client.assign(&p.vm, host_user).await {
            Ok(_) => {
                log::info!("broker: pool: {} on {host} given to {user} in {} ms", p.vm, t0.elapsed().as_millis());
                Some((p.vm.clone(), p.backend.clone()?))
            }
            Err(e) => {
                log::warn!("broker: pool: assigning {} on {host} to {user}: {e}; starting a VM instead", p.vm);
                self.stop(&p).await;
                None
            }
        }
    }

    async fn stop(&self, p: &PoolVm) {
        if let Some(c) = self.hosts.client(&p.host) {
            // Nobody's data is in a pool VM: no need to let it power off.
            if let Err(e) = c.stop(&p.vm, 0).await {
                log::warn!("broker: pool: stopping {} on {}: {e}", p.vm, p.host);
            }
        }
    }

    /// Called at the end of every decision, with its turn still held: remembers the state and
    /// refills in the background once the decision is over.
    pub(crate) fn settle(self: &Arc<Self>, state: State) {
        if self.size == 0 {
            return;
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.kick();
    }

    fn kick(self: &Arc<Self>) {
        self.dirty.store(true, Ordering::SeqCst);
        if !self.refilling.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().refill());
        }
    }

    async fn refill(self: Arc<Self>) {
        loop {
            self.dirty.store(false, Ordering::SeqCst);
            while self.refill_step().await {}
            self.refilling.store(false, Ordering::SeqCst);
            // A decision that ended while this loop was finishing must still be seen.
            if !self.dirty.load(Ordering::SeqCst) || self.refilling.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Stops one unwanted pool VM or boots one missing one; false when the pool is as wanted.
    async fn refill_step(self: &Arc<Self>) -> bool {
        let _turn = self.turn.lock().await;
        let state = self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let want = wanted(&self.planner, &state, self.size);
        let have: Vec<(HostId, usize)> = self.list().iter().map(|p| (p.host.clone(), p.level)).collect();
        let (stop, boot) = reconcile(&want, &have);
        if let Some(&i) = stop.first() {
            let p = self.list().remove(i);
            log::info!("broker: pool: stopping {} (level {} on {}): no newcomer would get it now", p.vm, p.level, p.host);
            self.stop(&p).await;
            return true;
        }
        let Some((host, level)) = boot.into_iter().next() else { return false };
        let bytes = self.planner.levels.size(level);
        let name = format!("pool-{}-{}", host_user_name(&host), now_ms() % 100_000_000);
        log::info!("broker: pool: booting {name} at level {level} ({} MiB) on {host}: where the next newcomer would go", bytes >> 20);
        let Some(client) = self.hosts.client(&host) else { return false };
        let req = CreateVm {
            name: name.clone(),
            template: self.cfg.template.clone(),
            memory_mib: bytes >> 20,
            vcpus: 1,
            user: String::new(),
            persistent: false,
            vnc_password: None,
            pool: true,
        };
        let backend = match client.create(&req).await.map_err(anyhow::Error::from).and_then(|c| backend_of(&c.vm.vnc, &c.vnc_password)) {
            Ok(b) => b,
            Err(e) => {
                log::error!("broker: pool: booting {name} on {host}: {e:#}; trying again in a minute");
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    me.kick();
                });
                return false;
            }
        };
        let created_ms = now_ms();
        self.list().push(PoolVm {
            vm: name.clone(),
            host: host.clone(),
            level,
            memory_mib: bytes >> 20,
            ready: false,
            created_ms,
            boot_ms: None,
            backend: Some(backend.clone()),
        });
        let me = self.clone();
        tokio::spawn(async move { me.wait_ready(name, backend).await });
        true
    }

    async fn wait_ready(self: Arc<Self>, name: String, backend: Backend) {
        let r = self.wait_booted(&name, &backend).await;
        let failed = {
            let mut l = self.list();
            let Some(i) = l.iter().position(|p| p.vm == name) else { return };
            match r {
                Ok(_) => {
                    let p = &mut l[i];
                    p.ready = true;
                    p.boot_ms = Some(now_ms().saturating_sub(p.created_ms));
                    log::info!("broker: pool: {name} on {} is ready after {} ms", p.host, p.boot_ms.unwrap_or(0));
                    None
                }
                Err(e) => Some((l.remove(i), e)),
            }
        };
        if let Some((p, e)) = failed {
            log::error!("broker: pool: {name} on {} never showed its desktop: {e:#}; trying again in a minute", p.host);
            self.stop(&p).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            self.kick();
        }
    }

    /// Probes a new pool VM until its screen is a booted desktop's ([`Booted`]). Its first
    /// frame is its firmware's, seconds before the guest's desktop, and the kernel may switch
    /// to the desktop's mode long before the desktop is drawn: a person given it then would sit
    /// through the rest of the boot, which is what the pool is there to spare them.
    async fn wait_booted(&self, name: &str, backend: &Backend) -> anyhow::Result<()> {
        let mut booted = Booted::new(self.cfg.desktop_size().ok().flatten());
        let deadline = Instant::now() + Duration::from_secs(self.cfg.switch_timeout_secs);
        loop {
            let (size, blank) = probe_screen(backend).await?;
            if booted.seen(size, blank) {
                return Ok(());
            }
            if Instant::now() > deadline {
                if booted.want.is_none() || !blank && booted.want == Some(size) {
                    // The firmware and the desktop may share a size, and a desktop may be one
                    // colour; a pool VM that is never ready helps nobody.
                    log::warn!(
                        "broker: pool: {name} kept a {} {}x{} screen for {} s; taking it as booted (set desktops.desktop_size to the desktop's size)",
                        if blank { "blank" } else { "still" },
                        size.0, size.1, self.cfg.switch_timeout_secs
                    );
                    return Ok(());
                }
                anyhow::bail!("its screen is {}x{}{}, not the desktop's {}", size.0, size.1, if blank { " and blank" } else { "" }, self.cfg.desktop_size);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Connects to a VM's screen, reads its first frame and returns its size and whether it is
/// blank ([`blank`]).
async fn probe_screen(backend: &Backend) -> anyhow::Result<((u16, u16), bool)> {
    let format = PixelFormat::rgb888();
    let ready: Ready = prepare(backend, format, vec![rfb::enc::RAW], PROBE_TIMEOUT, Duration::ZERO).await?;
    Ok(((ready.init.width, ready.init.height), blank(&ready.buffered, &format)))
}

/// How long one probe may take to connect and get a frame.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// True when 99 % or more of the pixels of the raw framebuffer update at the start of
/// `update` (32 bits a pixel) have one colour: a booting kernel's black console, perhaps with a
/// logo or a line of text, is no desktop, while a desktop has at least a bar or a few icons.
pub(crate) fn blank(update: &[u8], format: &PixelFormat) -> bool {
    let mut framer = ServerFramer::default();
    let mut at = 0;
    let mut counts: std::collections::HashMap<[u8; 3], u64> = std::collections::HashMap::new();
    let mut total = 0u64;
    while let Ok(Some((item, len))) = framer.next(&update[at..], format) {
        if let ServerItem::Rect { width, height, encoding: rfb::enc::RAW, .. } = item {
            let pixels = update.get(at + 12..at + len).unwrap_or(&[]);
            let n = usize::from(width) * usize::from(height);
            // A sparse grid is plenty to tell a screen of one colour from a desktop.
            for i in (0..n).step_by(7) {
                if let Some(p) = pixels.get(i * 4..i * 4 + 3) {
                    *counts.entry([p[0], p[1], p[2]]).or_default() += 1;
                    total += 1;
                }
            }
        }
        at += len;
        if framer.at_boundary() {
            break;
        }
    }
    let most = counts.values().copied().max().unwrap_or(0);
    total == 0 || most * 100 >= total * 99
}

/// Tells a booted desktop's screen from its firmware's by the screen sizes probed in turn.
#[derive(Debug)]
pub(crate) struct Booted {
    want: Option<(u16, u16)>,
    first: Option<(u16, u16)>,
    last: Option<(u16, u16)>,
}

impl Booted {
    pub(crate) fn new(want: Option<(u16, u16)>) -> Self {
        Booted { want, first: None, last: None }
    }

    /// One more probe saw a screen of `size`, `blank` or not ([`blank`]); true once the
    /// desktop has booted: a screen that is not blank, of the configured size or with "auto"
    /// of the same size twice in a row that is not the first frame's and is no firmware's
    /// (VGA text is 720x400, QEMU's screen before the guest sets a mode 640x480: a desktop is
    /// at least 800x600).
    pub(crate) fn seen(&mut self, size: (u16, u16), blank: bool) -> bool {
        let first = *self.first.get_or_insert(size);
        let again = self.last.replace(size) == Some(size);
        !blank
            && match self.want {
                Some(want) => size == want,
                None => again && size != first && size.0 >= 800 && size.1 >= 600,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::Levels;

    #[test]
    fn a_pool_vm_is_ready_at_the_desktops_screen_not_the_firmwares() {
        let text = (720, 400);
        let desk = (1280, 800);
        let mut b = Booted::new(Some(desk));
        assert!(!b.seen(text, false));
        assert!(!b.seen(desk, true), "the kernel switched to the desktop's mode, nothing drawn yet");
        assert!(b.seen(desk, false));
        let mut auto = Booted::new(None);
        assert!(!auto.seen(text, false));
        assert!(!auto.seen(text, false), "the firmware's size, however long, is not the desktop");
        assert!(!auto.seen(desk, true));
        assert!(!auto.seen(desk, true), "a blank screen of a new size is a booting kernel's");
        assert!(auto.seen(desk, false));
        let mut fresh = Booted::new(None);
        assert!(!fresh.seen(text, false));
        assert!(!fresh.seen(desk, false), "a new size must be seen twice: the guest may still be switching");
        assert!(fresh.seen(desk, false));
        let mut blink = Booted::new(None);
        for s in [text, (640, 480), text] {
            assert!(!blink.seen(s, false));
        }
        // QEMU's screen before the guest sets a mode, then the firmware's text, with a line
        // or two on it: no desktop, however long it stays.
        let mut bios = Booted::new(None);
        for s in [(640, 480), text, text, text] {
            assert!(!bios.seen(s, false));
        }
    }

    /// A FramebufferUpdate of one raw rectangle of `w` x `h` pixels, `paint(i)` the colour of
    /// pixel `i`.
    fn raw_update(w: u16, h: u16, paint: impl Fn(usize) -> [u8; 3]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 1];
        for v in [0u16, 0, w, h] {
            b.extend(v.to_be_bytes());
        }
        b.extend(rfb::enc::RAW.to_be_bytes());
        for i in 0..usize::from(w) * usize::from(h) {
            let [r, g, bl] = paint(i);
            b.extend([bl, g, r, 0]);
        }
        b
    }

    #[test]
    fn a_black_screen_with_a_logo_is_blank_and_colour_bars_are_not() {
        let f = PixelFormat::rgb888();
        let (w, h) = (320u16, 200u16);
        assert!(blank(&raw_update(w, h, |_| [0, 0, 0]), &f));
        // A logo or a line of text in a corner: under 1 % of the screen.
        let logo = |i: usize| if i % 320 < 30 && i / 320 < 20 { [255, 255, 0] } else { [0, 0, 0] };
        assert!(blank(&raw_update(w, h, logo), &f));
        // The desktop template's eight bars.
        let bars = |i: usize| {
            let k = (i % 320 / 40) as u8;
            [k * 30, 255 - k * 30, k * 10]
        };
        assert!(!blank(&raw_update(w, h, bars), &f));
        // A one-colour desktop with a task bar along its bottom.
        let bar = |i: usize| if i / 320 >= 190 { [200, 200, 200] } else { [0, 80, 160] };
        assert!(!blank(&raw_update(w, h, bar), &f));
        // Nothing to judge: taken as blank, so that the probe goes on.
        assert!(blank(&[], &f));
    }

    fn planner() -> Planner {
        Planner::new(Levels::explicit(vec![2048 << 20, 1024 << 20, 512 << 20]).unwrap())
    }

    fn user(id: &str, host: &str, level: usize, arrived: u64) -> UserState {
        UserState { id: id.into(), host: host.into(), level, arrived }
    }

    #[test]
    fn pool_goes_where_the_next_newcomers_would() {
        let p = planner();
        let s = State::uniform(2, 6 << 30);
        // 2 hosts of 6 GiB: U_0 = 5 users at 2 GiB, best fit fills h1 first.
        assert_eq!(wanted(&p, &s, 2), vec![("h1".into(), 0), ("h1".into(), 0)]);
        // Exactly what a real newcomer gets.
        let d = p.decide(&s, &Event::Arrive { user: "a".into() }).unwrap();
        assert!(matches!(&d.actions[..], [Action::Start { host, level: 0, .. }] if host == "h1"));
        // With 5 users at 2 GiB the 6th gets 1 GiB in h2's last 2 GiB, keeping 1 GiB reserve;
        // the 7th would need a handoff, so the pool stops there.
        let mut full = s.clone();
        for (i, h) in ["h1", "h1", "h1", "h2", "h2"].iter().enumerate() {
            full.users.push(user(&format!("u{i}"), h, 0, i as u64));
        }
        assert_eq!(wanted(&p, &full, 3), vec![("h2".into(), 1)]);
    }

    #[test]
    fn pool_and_state_never_break_the_invariants() {
        let p = planner();
        let mut s = State::uniform(2, 6 << 30);
        for n in 0..12 {
            let want = wanted(&p, &s, 3);
            let mut with_pool = s.clone();
            for (k, (h, l)) in want.iter().enumerate() {
                with_pool.users.push(user(&format!("pool vm {k}"), h, *l, 1000 + k as u64));
            }
            with_pool.validate(&p.levels).unwrap();
            assert!(with_pool.reserve_kept(&p.levels), "{n} users, pool {want:?}");
            let d = p.decide(&s, &Event::Arrive { user: format!("u{n}") }).unwrap();
            s.apply(&p.levels, &d).unwrap();
        }
    }

    #[test]
    fn reconcile_keeps_matches_and_stops_the_rest() {
        let want = vec![("h1".to_string(), 1), ("h2".to_string(), 1)];
        let have = vec![("h1".to_string(), 0), ("h2".to_string(), 1)];
        assert_eq!(reconcile(&want, &have), (vec![0], vec![("h1".to_string(), 1)]));
        assert_eq!(reconcile(&[], &have), (vec![0, 1], vec![]));
    }

    #[test]
    fn a_decision_stops_pool_vms_in_its_way_only() {
        let p = planner();
        let levels = &p.levels;
        // One 4 GiB host: U_0 = 1. User a at 2 GiB; a pool VM at level 1 (1 GiB) for the next.
        let mut s = State::uniform(1, 4 << 30);
        s.users.push(user("a", "h1", 0, 0));
        assert_eq!(wanted(&p, &s, 1), vec![("h1".into(), 1)]);
        let pool = vec![Held { host: "h1".into(), level: 1, ready: true }];
        // b arrives and takes the pool VM: nothing to stop.
        let d = p.decide(&s, &Event::Arrive { user: "b".into() }).unwrap();
        assert!(evictions(levels, &s, &pool, &d.actions).is_empty(), "{d:?}");
        // A booting pool VM cannot be taken: b's own VM needs its memory.
        let booting = vec![Held { ready: false, ..pool[0].clone() }];
        assert_eq!(evictions(levels, &s, &booting, &d.actions), vec![0]);
        // A pool VM on a host that went down is dropped.
        let mut down = s.clone();
        down.hosts[0].up = false;
        assert_eq!(evictions(levels, &down, &pool, &[]), vec![0]);
    }

    #[test]
    fn a_handoff_gets_the_memory_of_a_pool_vm() {
        let p = planner();
        let levels = &p.levels;
        // 4 GiB: a at 2 GiB, b at 1 GiB. The next newcomer would need a handoff: no pool VM.
        let mut s = State::uniform(1, 4 << 30);
        s.users.push(user("a", "h1", 0, 0));
        s.users.push(user("b", "h1", 1, 1));
        assert!(wanted(&p, &s, 1).is_empty());
        // A pool VM of 512 MiB left from before (not yet stopped by the refill) takes the last
        // reserve memory: c's handoff of a to 1 GiB needs it, so it is stopped first.
        let pool = vec![Held { host: "h1".into(), level: 2, ready: true }];
        let d = p.decide(&s, &Event::Arrive { user: "c".into() }).unwrap();
        assert!(d.actions.iter().any(|a| matches!(a, Action::Handoff { .. })), "{d:?}");
        assert_eq!(evictions(levels, &s, &pool, &d.actions), vec![0]);
        assert!(replay(levels, &s, &pool, &[false], &d.actions).is_ok());
        assert!(replay(levels, &s, &pool, &[true], &d.actions).is_err());
    }
}
