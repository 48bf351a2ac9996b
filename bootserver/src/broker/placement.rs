//! The memory algorithm's steps on a simulated copy of the state: every step records the action
//! that carries it out, so a plan is built by doing it. Placement is best fit per host.

use super::memory::{Action, Levels, State, UserId, UserState};
use super::size::Bytes;

/// A user to move one level down, and where its smaller VM goes.
struct Shrink {
    user: UserId,
    host: String,
    passed_over: bool,
}

#[derive(Clone)]
pub(crate) struct Sim<'a> {
    levels: &'a Levels,
    state: State,
    actions: Vec<Action>,
}

impl<'a> Sim<'a> {
    pub(crate) fn new(levels: &'a Levels, state: State) -> Self {
        Sim { levels, state, actions: Vec::new() }
    }

    pub(crate) fn into_actions(self) -> Vec<Action> {
        self.actions
    }

    fn size(&self, level: usize) -> u64 {
        self.levels.size(level)
    }

    fn free(&self, host: &str) -> u64 {
        self.state.free(self.levels, host)
    }

    /// Up hosts with at least `size` free, best fit first (least free, then listed order).
    fn hosts_by_fit(&self, size: u64) -> Vec<String> {
        let mut fits: Vec<(u64, usize, String)> = (self.state.hosts.iter().enumerate())
            .map(|(i, h)| (self.free(&h.id), i, h.id.clone()))
            .filter(|(free, _, _)| *free >= size)
            .collect();
        fits.sort();
        fits.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Whether the reserve would still be kept with `user` at `level` on `host` (the user's
    /// current VM, if any, counted as gone).
    fn keeps_reserve_with(&self, user: &str, level: usize, host: &str) -> bool {
        let mut after = self.state.clone();
        after.users.retain(|u| u.id != user);
        after.users.push(UserState { id: user.into(), host: host.into(), level, arrived: 0 });
        after.reserve_kept(self.levels)
    }

    fn host_desc(&self, host: &str) -> String {
        let cap = self.state.host(host).map_or(0, |h| h.capacity);
        format!("{host} (best fit: {} free of {})", Bytes(self.free(host)), Bytes(cap))
    }

    fn start(&mut self, user: &str, arrived: u64, level: usize, host: String, reason: String) {
        let bytes = self.size(level);
        let u = UserState { id: user.into(), host: host.clone(), level, arrived };
        self.state.users.push(u);
        self.actions.push(Action::Start { user: user.into(), host, level, bytes, reason });
    }

    fn handoff(&mut self, user: &str, to_level: usize, to_host: String, reason: String) {
        let (from_bytes, to_bytes) = {
            let u = self.state.user(user).expect("handoff of a placed user");
            (self.size(u.level), self.size(to_level))
        };
        let u = self.state.users.iter_mut().find(|u| u.id == user).expect("placed user");
        self.actions.push(Action::Handoff {
            user: user.into(),
            from_host: std::mem::replace(&mut u.host, to_host.clone()),
            from_level: std::mem::replace(&mut u.level, to_level),
            from_bytes,
            to_host,
            to_level,
            to_bytes,
            reason,
        });
    }

    pub(crate) fn stop(&mut self, user: UserId, reason: String) {
        if let Some(i) = self.state.users.iter().position(|u| u.id == user) {
            let u = self.state.users.remove(i);
            let bytes = self.size(u.level);
            let (host, level) = (u.host, u.level);
            self.actions.push(Action::Stop { user, host, level, bytes, reason });
        }
    }

    pub(crate) fn refuse(&mut self, user: &str, message: String) {
        self.state.users.retain(|u| u.id != user);
        self.actions.push(Action::Refuse { user: user.into(), message });
    }

    /// The newest user whose VM is larger than `above` and whose next smaller VM can be
    /// pre-booted somewhere, with the host it would go to and whether newer users above that
    /// size had to be passed over for lack of room.
    fn shrink_candidate(&self, above: u64) -> Option<Shrink> {
        self.state
            .newest_first()
            .into_iter()
            .filter(|u| u.level < self.levels.lowest() && self.size(u.level) > above)
            .enumerate()
            .find_map(|(i, u)| {
                let host = self.hosts_by_fit(self.size(u.level + 1)).into_iter().next()?;
                Some(Shrink { user: u.id.clone(), host, passed_over: i > 0 })
            })
    }

    /// Moves a user one level down, explaining why with `why`.
    fn shrink(&mut self, s: Shrink, why: &str) {
        let Shrink { user, host, passed_over } = s;
        let u = self.state.user(&user).expect("candidate is placed");
        let (level, old_host) = (u.level, u.host.clone());
        let which = if passed_over {
            "the newest user above that size whose smaller VM fits on a host"
        } else {
            "the newest user above that size"
        };
        let reason = format!(
            "{why}: {user} is {which}; {} -> {} by hard handoff, \
             pre-booted on {} before its VM on {old_host} stops",
            Bytes(self.size(level)),
            Bytes(self.size(level + 1)),
            self.host_desc(&host),
        );
        self.handoff(&user, level + 1, host, reason);
    }

    /// Places a user who has no VM (a newcomer, or one whose host went down), moving newer
    /// users down first where the reserve requires it. On failure returns the message for the
    /// user's screen and leaves `self` as it was.
    pub(crate) fn arrive(self, user: &str, arrived: u64, prefix: &str) -> Result<Self, String> {
        let levels = self.levels;
        let lowest = levels.lowest();
        let n = self.state.users.len() + 1;
        let (first, why) = match self.state.level_for(levels, n) {
            Some(m) => {
                let u = self.state.max_users(levels, m);
                let smaller = if m > 0 {
                    format!(" > U_{} = {}", m - 1, self.state.max_users(levels, m - 1))
                } else {
                    String::new()
                };
                (m, format!("n = {n} users{smaller} and <= U_{m} = {u}"))
            }
            None => {
                let u = self.state.max_users(levels, lowest);
                (
                    lowest,
                    format!("n = {n} users > U_{lowest} = {u}: only the reserved slot is left"),
                )
            }
        };
        for level in first..=lowest {
            let mut t = self.clone();
            let size = t.size(level);
            let fallback = if level > first {
                format!(" (level {first} cannot be placed on any host)")
            } else {
                String::new()
            };
            loop {
                let keeping =
                    t.hosts_by_fit(size).into_iter().find(|h| t.keeps_reserve_with(user, level, h));
                if let Some(host) = keeping {
                    let reason = format!(
                        "{prefix}{why}, so level {level} ({}){fallback}; on {}",
                        Bytes(size),
                        t.host_desc(&host)
                    );
                    t.start(user, arrived, level, host, reason);
                    return Ok(t);
                }
                let Some(victim) = t.shrink_candidate(size) else {
                    break;
                };
                let why = format!(
                    "{prefix}making room for {user} at {} while keeping a free slot for handoffs",
                    Bytes(size)
                );
                t.shrink(victim, &why);
            }
        }
        Err(self.refusal_message(n))
    }

    fn refusal_message(&self, n: usize) -> String {
        let lowest = self.levels.lowest();
        let up = self.state.hosts.iter().filter(|h| h.up).count();
        let cap: u64 = self.state.hosts.iter().filter(|h| h.up).map(|h| h.capacity).sum();
        if self.state.reserve_needed(self.levels) > 0 && !self.state.reserve_kept(self.levels) {
            return format!(
                "No desktop is free right now: {} users share {} on {up} host{}, and no \
                 desktop can be made smaller until memory frees up, because a host failure \
                 used the slot kept for that. Please try again later.",
                n - 1,
                Bytes(cap),
                if up == 1 { "" } else { "s" },
            );
        }
        format!(
            "No desktop is free: {} users already share {} on {up} host{} and the memory \
             cannot be split further (at most {} desktops of {}). Please try again later.",
            n - 1,
            Bytes(cap),
            if up == 1 { "" } else { "s" },
            self.state.slots(self.levels, lowest),
            Bytes(self.size(lowest)),
        )
    }

    /// Moves the newest users above the lowest level down until the reserve is back (it can
    /// be lost only when a host goes down).
    pub(crate) fn restore_reserve(&mut self) {
        while !self.state.reserve_kept(self.levels) {
            let Some(victim) = self.shrink_candidate(self.size(self.levels.lowest())) else {
                return;
            };
            let need = self.state.reserve_needed(self.levels);
            let why = format!("restoring a free slot of {} for handoffs", Bytes(need));
            self.shrink(victim, &why);
        }
    }

    /// Grows users below the target level back up, one level per handoff: the smallest
    /// desktops first, among equals the most senior, and only while the reserve is kept.
    pub(crate) fn regrow(&mut self) {
        loop {
            let n = self.state.users.len();
            let Some(target) = self.state.level_for(self.levels, n) else {
                return;
            };
            let mut below: Vec<&UserState> =
                self.state.users.iter().filter(|u| u.level > target).collect();
            below.sort_by(|a, b| (b.level, a.arrived, &a.id).cmp(&(a.level, b.arrived, &b.id)));
            let grow = below.iter().find_map(|u| {
                let host = self
                    .hosts_by_fit(self.size(u.level - 1))
                    .into_iter()
                    .find(|h| self.keeps_reserve_with(&u.id, u.level - 1, h))?;
                Some((u.id.clone(), u.level, host))
            });
            let Some((user, level, host)) = grow else {
                return;
            };
            let reason = format!(
                "n = {n} users <= U_{target} = {}, so desktops grow back to {}; {user} is \
                 next (smallest desktop first, then most senior); {} -> {} by hard handoff, \
                 pre-booted on {}",
                self.state.max_users(self.levels, target),
                Bytes(self.size(target)),
                Bytes(self.size(level)),
                Bytes(self.size(level - 1)),
                self.host_desc(&host),
            );
            self.handoff(&user, level - 1, host, reason);
        }
    }

    /// Marks `host` down and places its users again, most senior first.
    pub(crate) fn host_down(&mut self, host: &str) {
        if let Some(h) = self.state.hosts.iter_mut().find(|h| h.id == host) {
            h.up = false;
        }
        let mut displaced: Vec<UserState> =
            self.state.users.iter().filter(|u| u.host == host).cloned().collect();
        displaced.sort_by(|a, b| (a.arrived, &a.id).cmp(&(b.arrived, &b.id)));
        self.state.users.retain(|u| u.host != host);
        for u in displaced {
            let prefix = format!("host {host} is down and {}'s VM with it; ", u.id);
            match self.clone().arrive(&u.id, u.arrived, &prefix) {
                Ok(done) => *self = done,
                Err(message) => {
                    // Someone who had a desktop keeps one if any host has room at all: losing
                    // it is worse than a missing reserve, which only delays later arrivals.
                    let lowest = self.levels.lowest();
                    match self.hosts_by_fit(self.size(lowest)).into_iter().next() {
                        Some(host) => {
                            let reason = format!(
                                "{prefix}no level keeps a free slot for handoffs now, so the \
                                 lowest ({}) on {}, using the reserve",
                                Bytes(self.size(lowest)),
                                self.host_desc(&host)
                            );
                            self.start(&u.id, u.arrived, lowest, host, reason);
                        }
                        None => {
                            let message = format!("Your desktop's server stopped. {message}");
                            self.refuse(&u.id, message)
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn host_up(&mut self, host: &str) {
        if let Some(h) = self.state.hosts.iter_mut().find(|h| h.id == host) {
            h.up = true;
        }
    }
}
