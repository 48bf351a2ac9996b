//! The memory algorithm (paper 000, section 3.3): how much memory each user's desktop VM gets,
//! on which host, and which existing desktops are moved by hard handoff to make room.
//!
//! Pure: [`Planner::decide`] takes the current [`State`] and an [`Event`] and returns a
//! [`Decision`], a list of [`Action`]s each with a human-readable reason, ordered so that every
//! action is feasible when executed in order. [`State::apply`] replays a decision on a state and
//! checks every step against host capacities, which is what the broker does as each action
//! completes and what the tests use to prove a plan feasible.
//!
//! # The rules
//!
//! Levels `m = 0..=M` give a VM `size(m)` bytes, largest first (2 GiB, 1 GiB, 512 MiB in the
//! paper). With `slots(m)` the number of level-`m` VMs that fit on the hosts that are up (each
//! host counted on its own: `floor(capacity / size(m))`), level `m` serves
//! `U_m = slots(m) - 1` users. With `S` hosts of the paper's equal size this is exactly the
//! paper's `U_m = 2^m * S - 1`; it also holds for hosts of different sizes and for levels that
//! do not halve.
//!
//! * **Arrival.** With `n` users counting the newcomer, the newcomer gets the smallest `m` with
//!   `n <= U_m`. While placing it would not leave the reserve (below), the newest user whose VM
//!   is larger than the newcomer's is moved down one level by hard handoff, and this repeats.
//!   Past `U_M` only the lowest level is offered, and only once nobody is above it. When even
//!   that does not fit, the newcomer is refused with a message for the client's screen. If
//!   hosts are so fragmented that the newcomer's level cannot be placed at all, the next lower
//!   level is tried before refusing.
//! * **Reserve.** While any VM is above the lowest size, some host keeps enough free memory to
//!   pre-boot the next smaller VM of any such user (`size(level + 1)`, the largest one needed),
//!   so a hard handoff can always boot the replacement before the old VM stops. Once everyone
//!   is at the lowest size no handoff can be needed, and the reserve may be used.
//! * **Handoff.** The replacement VM is booted first (best fit on any host, its own included),
//!   then the old one stops: a plan counts both VMs at that moment.
//! * **Regrowth** (after a departure or a host coming back). With `n` users the target is the
//!   level a newcomer would get, the smallest `m` with `n <= U_m`. Users below it grow back
//!   one level per handoff, one at a time: the smallest desktop first, among equals the most
//!   senior (earliest arrival), so everybody reaches a level before anyone goes past it, and a
//!   growth is made only where the reserve is still kept afterwards. Users are never grown past
//!   the target: the spare memory stays as headroom for the next arrivals.
//! * **Host down.** Its VMs are gone; its users, most senior first, are placed again as if they
//!   arrived (keeping their seniority), which may move newer users down. A displaced user who
//!   cannot be placed even at the lowest level is refused; users on other hosts are never
//!   dropped. Then the reserve is restored where handoffs can do it, and users regrow.
//! * **Placement** is best fit: the up host with the least free memory that still fits (ties go
//!   to the host listed first), which keeps large holes for large VMs.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::placement::Sim;
use super::size::Bytes;

/// A user's name as the broker knows it (the client's MAC, a login, ...).
pub type UserId = String;
/// A virtualization host's name, as in the broker's configuration.
pub type HostId = String;

/// The memory levels a desktop VM can have, largest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct Levels {
    sizes: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LevelsError {
    #[error("memory levels: at least one level is needed")]
    Empty,
    #[error("memory levels: a level of 0 bytes makes no VM")]
    Zero,
    #[error("memory levels must be strictly decreasing, largest first, but {next} follows {prev}")]
    NotDecreasing { prev: Bytes, next: Bytes },
    #[error("memory levels: {max} cannot be halved {count} times into whole bytes")]
    NotHalvable { max: Bytes, count: usize },
}

impl Levels {
    /// `count` levels starting at `max`, each half the one before (the paper: 2 GiB, 3 levels).
    pub fn halving(max: u64, count: usize) -> Result<Self, LevelsError> {
        if count == 0 {
            return Err(LevelsError::Empty);
        }
        let lowest_shift = u32::try_from(count - 1).unwrap_or(u32::MAX);
        if lowest_shift >= 64 || max % (1u64 << lowest_shift) != 0 || max >> lowest_shift == 0 {
            return Err(LevelsError::NotHalvable { max: Bytes(max), count });
        }
        Self::explicit((0..count).map(|m| max >> m).collect())
    }

    /// Levels given one by one, largest first.
    pub fn explicit(sizes: Vec<u64>) -> Result<Self, LevelsError> {
        if sizes.is_empty() {
            return Err(LevelsError::Empty);
        }
        if sizes.contains(&0) {
            return Err(LevelsError::Zero);
        }
        if let Some(w) = sizes.windows(2).find(|w| w[1] >= w[0]) {
            return Err(LevelsError::NotDecreasing { prev: Bytes(w[0]), next: Bytes(w[1]) });
        }
        Ok(Levels { sizes })
    }

    /// Bytes of a VM at `level`, `None` past the lowest level.
    pub fn get(&self, level: usize) -> Option<u64> {
        self.sizes.get(level).copied()
    }

    pub fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// Index of the lowest (smallest) level, `M`.
    pub fn lowest(&self) -> usize {
        self.sizes.len() - 1
    }

    /// Bytes of a VM at a level known to exist (levels come from a validated state).
    pub(crate) fn size(&self, level: usize) -> u64 {
        self.sizes[level.min(self.lowest())]
    }
}

impl TryFrom<Vec<u64>> for Levels {
    type Error = LevelsError;
    fn try_from(sizes: Vec<u64>) -> Result<Self, LevelsError> {
        Levels::explicit(sizes)
    }
}

impl From<Levels> for Vec<u64> {
    fn from(l: Levels) -> Vec<u64> {
        l.sizes
    }
}

/// A virtualization host as the algorithm sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub id: HostId,
    /// Memory available for desktop VMs, in bytes.
    pub capacity: u64,
    pub up: bool,
}

/// A connected user and the VM they have now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub id: UserId,
    pub host: HostId,
    pub level: usize,
    /// Arrival order: larger is newer. Kept across handoffs and host failures.
    pub arrived: u64,
}

/// Everything the algorithm needs to know: hosts and users with their VMs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub hosts: Vec<HostState>,
    pub users: Vec<UserState>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A user wants a desktop.
    Arrive { user: UserId },
    /// A user is done; their VM stops.
    Leave { user: UserId },
    /// A host stopped answering: its VMs are lost.
    HostDown { host: HostId },
    /// A host is back (or new) and empty.
    HostUp { host: HostId },
    /// After a broker restart, the host's VMs were checked against the stored sessions; the
    /// users whose VMs were gone are no longer in the state, so the others may grow back.
    Recovered { host: HostId },
}

/// One step of a decision. Sizes are in bytes; levels index [`Levels`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Boot a VM for a user who has none (a newcomer, or one whose host went down).
    Start { user: UserId, host: HostId, level: usize, bytes: u64, reason: String },
    /// Hard handoff: boot the VM on `to_host` first, switch the user to it, then stop the VM
    /// on `from_host`. Both VMs exist in between.
    Handoff {
        user: UserId,
        from_host: HostId,
        from_level: usize,
        from_bytes: u64,
        to_host: HostId,
        to_level: usize,
        to_bytes: u64,
        reason: String,
    },
    /// Stop a user's VM; the user is gone.
    Stop { user: UserId, host: HostId, level: usize, bytes: u64, reason: String },
    /// The user gets no desktop; `message` is meant for their screen.
    Refuse { user: UserId, message: String },
}

impl Action {
    pub fn user(&self) -> &str {
        match self {
            Action::Start { user, .. }
            | Action::Handoff { user, .. }
            | Action::Stop { user, .. }
            | Action::Refuse { user, .. } => user,
        }
    }

    /// Why this action was chosen (the refusal message for a refusal).
    pub fn reason(&self) -> &str {
        match self {
            Action::Start { reason, .. }
            | Action::Handoff { reason, .. }
            | Action::Stop { reason, .. } => reason,
            Action::Refuse { message, .. } => message,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start { user, host, bytes, reason, .. } => {
                write!(f, "start {user} at {} on {host}: {reason}", Bytes(*bytes))
            }
            Action::Handoff { user, from_host, from_bytes, to_host, to_bytes, reason, .. } => {
                write!(
                    f,
                    "hand off {user} from {} on {from_host} to {} on {to_host}: {reason}",
                    Bytes(*from_bytes),
                    Bytes(*to_bytes)
                )
            }
            Action::Stop { user, host, bytes, reason, .. } => {
                write!(f, "stop {user} ({} on {host}): {reason}", Bytes(*bytes))
            }
            Action::Refuse { user, message } => write!(f, "refuse {user}: {message}"),
        }
    }
}

/// The algorithm's answer to one event, for the broker to execute in order and for logs and
/// the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub event: Event,
    /// One line for logs.
    pub summary: String,
    pub actions: Vec<Action>,
}

impl Decision {
    /// The refusal message, if this decision refuses someone.
    pub fn refusal(&self) -> Option<&str> {
        self.actions.iter().find_map(|a| match a {
            Action::Refuse { message, .. } => Some(message.as_str()),
            _ => None,
        })
    }
}

/// The event does not fit the state (a caller error, not a capacity problem).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("user {0} already has a desktop")]
    AlreadyConnected(UserId),
    #[error("no user {0} is connected")]
    UnknownUser(UserId),
    #[error("no host {0} is configured")]
    UnknownHost(HostId),
    #[error("inconsistent state: {0}")]
    State(#[from] StateError),
}

/// A state that no plan can start from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("host {0} is listed twice")]
    DuplicateHost(HostId),
    #[error("user {0} is listed twice")]
    DuplicateUser(UserId),
    #[error("user {user} is on host {host}, which is not configured")]
    UserOnUnknownHost { user: UserId, host: HostId },
    #[error("user {user} is on host {host}, which is down")]
    UserOnDownHost { user: UserId, host: HostId },
    #[error("user {user} has level {level}, but the lowest level is {lowest}")]
    BadLevel { user: UserId, level: usize, lowest: usize },
    #[error("host {host} holds {used} of VMs but has only {capacity}")]
    OverCapacity { host: HostId, used: Bytes, capacity: Bytes },
}

/// An action that cannot be carried out on the state it is applied to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("{action}: no user {user} is connected")]
    UnknownUser { action: &'static str, user: UserId },
    #[error("{action}: no host {host} is configured")]
    UnknownHost { action: &'static str, host: HostId },
    #[error("{action}: host {host} is down")]
    HostDown { action: &'static str, host: HostId },
    #[error("{action} for {user}: host {host} has {free} free, {needed} needed")]
    NoRoom { action: &'static str, user: UserId, host: HostId, free: Bytes, needed: Bytes },
    #[error("start for {user}: the user already has a VM on {host}")]
    AlreadyRunning { user: UserId, host: HostId },
    #[error("{action} for {user}: the plan says level {planned} on {planned_host}, the state says level {actual} on {actual_host}")]
    Mismatch {
        action: &'static str,
        user: UserId,
        planned: usize,
        planned_host: HostId,
        actual: usize,
        actual_host: HostId,
    },
    #[error("{action} for {user}: level {level} does not exist")]
    BadLevel { action: &'static str, user: UserId, level: usize },
}

impl State {
    /// `count` empty hosts `h1..hN` of `capacity` bytes each, all up.
    pub fn uniform(count: usize, capacity: u64) -> Self {
        let hosts =
            (1..=count).map(|i| HostState { id: format!("h{i}"), capacity, up: true }).collect();
        State { hosts, users: Vec::new() }
    }

    pub fn host(&self, id: &str) -> Option<&HostState> {
        self.hosts.iter().find(|h| h.id == id)
    }

    pub fn user(&self, id: &str) -> Option<&UserState> {
        self.users.iter().find(|u| u.id == id)
    }

    /// Bytes used by VMs on `host`.
    pub fn used(&self, levels: &Levels, host: &str) -> u64 {
        self.users.iter().filter(|u| u.host == host).map(|u| levels.size(u.level)).sum()
    }

    /// Free bytes on `host` (0 when it is down or unknown).
    pub fn free(&self, levels: &Levels, host: &str) -> u64 {
        match self.host(host) {
            Some(h) if h.up => h.capacity.saturating_sub(self.used(levels, host)),
            _ => 0,
        }
    }

    /// Free bytes over all hosts that are up.
    pub fn total_free(&self, levels: &Levels) -> u64 {
        self.hosts.iter().map(|h| self.free(levels, &h.id)).sum()
    }

    /// How many VMs of `level` the up hosts hold when empty, each host on its own.
    pub fn slots(&self, levels: &Levels, level: usize) -> usize {
        let size = levels.size(level);
        self.hosts.iter().filter(|h| h.up).map(|h| (h.capacity / size) as usize).sum()
    }

    /// `U_m`: how many users level `m` serves while keeping one slot free.
    pub fn max_users(&self, levels: &Levels, level: usize) -> usize {
        self.slots(levels, level).saturating_sub(1)
    }

    /// The smallest level `m` with `n <= U_m`, or `None` past `U_M`.
    pub fn level_for(&self, levels: &Levels, n: usize) -> Option<usize> {
        (0..levels.sizes.len()).find(|&m| n <= self.max_users(levels, m))
    }

    /// Bytes that some host must keep free so that any user above the lowest level can be
    /// handed off one level down; 0 when everyone is at the lowest level.
    pub fn reserve_needed(&self, levels: &Levels) -> u64 {
        self.users
            .iter()
            .filter(|u| u.level < levels.lowest())
            .map(|u| levels.size(u.level + 1))
            .max()
            .unwrap_or(0)
    }

    /// Whether the one-slot reserve is there (always true when nobody is above the lowest).
    pub fn reserve_kept(&self, levels: &Levels) -> bool {
        let need = self.reserve_needed(levels);
        need == 0 || self.hosts.iter().any(|h| self.free(levels, &h.id) >= need)
    }

    /// Users from the newest to the oldest arrival.
    pub fn newest_first(&self) -> Vec<&UserState> {
        let mut v: Vec<&UserState> = self.users.iter().collect();
        v.sort_by(|a, b| (b.arrived, &b.id).cmp(&(a.arrived, &a.id)));
        v
    }

    /// Checks that a plan can start from this state.
    pub fn validate(&self, levels: &Levels) -> Result<(), StateError> {
        for (i, h) in self.hosts.iter().enumerate() {
            if self.hosts[..i].iter().any(|o| o.id == h.id) {
                return Err(StateError::DuplicateHost(h.id.clone()));
            }
        }
        for (i, u) in self.users.iter().enumerate() {
            if self.users[..i].iter().any(|o| o.id == u.id) {
                return Err(StateError::DuplicateUser(u.id.clone()));
            }
            let host = self.host(&u.host).ok_or_else(|| StateError::UserOnUnknownHost {
                user: u.id.clone(),
                host: u.host.clone(),
            })?;
            if !host.up {
                let (user, host) = (u.id.clone(), u.host.clone());
                return Err(StateError::UserOnDownHost { user, host });
            }
            if u.level > levels.lowest() {
                let (user, level, lowest) = (u.id.clone(), u.level, levels.lowest());
                return Err(StateError::BadLevel { user, level, lowest });
            }
        }
        for h in &self.hosts {
            let used = self.used(levels, &h.id);
            if used > h.capacity {
                return Err(StateError::OverCapacity {
                    host: h.id.clone(),
                    used: Bytes(used),
                    capacity: Bytes(h.capacity),
                });
            }
        }
        Ok(())
    }

    /// Applies a whole decision: the event's own effect on hosts, then every action in order,
    /// each checked against host capacities at that moment.
    pub fn apply(&mut self, levels: &Levels, decision: &Decision) -> Result<(), ApplyError> {
        match &decision.event {
            Event::HostDown { host } | Event::HostUp { host } => {
                let up = matches!(decision.event, Event::HostUp { .. });
                let h = self.hosts.iter_mut().find(|h| &h.id == host).ok_or_else(|| {
                    ApplyError::UnknownHost { action: "host event", host: host.clone() }
                })?;
                h.up = up;
            }
            Event::Arrive { .. } | Event::Leave { .. } | Event::Recovered { .. } => {}
        }
        decision.actions.iter().try_for_each(|a| self.apply_action(levels, a))
    }

    /// Applies one action, checking it is feasible now. A handoff needs room for the new VM
    /// while the old one still runs.
    pub fn apply_action(&mut self, levels: &Levels, action: &Action) -> Result<(), ApplyError> {
        match action {
            Action::Start { user, host, level, .. } => {
                let name = "start";
                self.check_room(levels, name, user, host, *level)?;
                match self.users.iter_mut().find(|u| &u.id == user) {
                    Some(u) => {
                        // Only a user whose host died may be started again.
                        if self.hosts.iter().any(|h| h.id == u.host && h.up) {
                            let (user, host) = (user.clone(), u.host.clone());
                            return Err(ApplyError::AlreadyRunning { user, host });
                        }
                        u.host = host.clone();
                        u.level = *level;
                    }
                    None => {
                        let arrived = self.users.iter().map(|u| u.arrived + 1).max().unwrap_or(0);
                        self.users.push(UserState {
                            id: user.clone(),
                            host: host.clone(),
                            level: *level,
                            arrived,
                        });
                    }
                }
            }
            Action::Handoff { user, from_host, from_level, to_host, to_level, .. } => {
                let name = "handoff";
                self.check_current(name, user, from_host, *from_level)?;
                self.check_room(levels, name, user, to_host, *to_level)?;
                let u = self.users.iter_mut().find(|u| &u.id == user).expect("checked above");
                u.host = to_host.clone();
                u.level = *to_level;
            }
            Action::Stop { user, host, level, .. } => {
                self.check_current("stop", user, host, *level)?;
                self.users.retain(|u| &u.id != user);
            }
            Action::Refuse { user, .. } => self.users.retain(|u| &u.id != user),
        }
        Ok(())
    }

    fn check_room(
        &self,
        levels: &Levels,
        action: &'static str,
        user: &str,
        host: &str,
        level: usize,
    ) -> Result<(), ApplyError> {
        let needed = levels.get(level).ok_or_else(|| ApplyError::BadLevel {
            action,
            user: user.to_string(),
            level,
        })?;
        let h = self
            .host(host)
            .ok_or_else(|| ApplyError::UnknownHost { action, host: host.to_string() })?;
        if !h.up {
            return Err(ApplyError::HostDown { action, host: host.to_string() });
        }
        let free = self.free(levels, host);
        if free < needed {
            return Err(ApplyError::NoRoom {
                action,
                user: user.to_string(),
                host: host.to_string(),
                free: Bytes(free),
                needed: Bytes(needed),
            });
        }
        Ok(())
    }

    fn check_current(
        &self,
        action: &'static str,
        user: &str,
        host: &str,
        level: usize,
    ) -> Result<(), ApplyError> {
        let u = self
            .user(user)
            .ok_or_else(|| ApplyError::UnknownUser { action, user: user.to_string() })?;
        if u.host != host || u.level != level {
            return Err(ApplyError::Mismatch {
                action,
                user: user.to_string(),
                planned: level,
                planned_host: host.to_string(),
                actual: u.level,
                actual_host: u.host.clone(),
            });
        }
        Ok(())
    }
}

/// The memory algorithm with its configured levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planner {
    pub levels: Levels,
}

impl Planner {
    pub fn new(levels: Levels) -> Self {
        Planner { levels }
    }

    /// Decides what to do about `event` in `state`. Errors only when the event does not fit
    /// the state (unknown user or host, a user arriving twice) or the state is inconsistent;
    /// running out of memory is a decision with a [`Action::Refuse`], not an error.
    pub fn decide(&self, state: &State, event: &Event) -> Result<Decision, PlanError> {
        state.validate(&self.levels)?;
        let mut sim = Sim::new(&self.levels, state.clone());
        let summary = match event {
            Event::Arrive { user } => {
                if state.user(user).is_some() {
                    return Err(PlanError::AlreadyConnected(user.clone()));
                }
                let arrived = state.users.iter().map(|u| u.arrived + 1).max().unwrap_or(0);
                match sim.clone().arrive(user, arrived, "") {
                    Ok(done) => sim = done,
                    Err(message) => sim.refuse(user, message),
                }
                format!("{user} arrives")
            }
            Event::Leave { user } => {
                let u = state.user(user).ok_or_else(|| PlanError::UnknownUser(user.clone()))?;
                sim.stop(u.id.clone(), "the user left".into());
                sim.regrow();
                format!("{user} leaves")
            }
            Event::HostDown { host } => {
                let h = state.host(host).ok_or_else(|| PlanError::UnknownHost(host.clone()))?;
                if h.up {
                    sim.host_down(host);
                    sim.restore_reserve();
                    sim.regrow();
                }
                format!("host {host} is down")
            }
            Event::HostUp { host } => {
                let h = state.host(host).ok_or_else(|| PlanError::UnknownHost(host.clone()))?;
                if !h.up {
                    sim.host_up(host);
                    sim.regrow();
                }
                format!("host {host} is up")
            }
            Event::Recovered { host } => {
                state.host(host).ok_or_else(|| PlanError::UnknownHost(host.clone()))?;
                sim.regrow();
                format!("sessions on host {host} recovered after a restart")
            }
        };
        let actions = sim.into_actions();
        let summary = summarize(summary, &actions);
        Ok(Decision { event: event.clone(), summary, actions })
    }
}

fn summarize(what: String, actions: &[Action]) -> String {
    let count = |f: fn(&Action) -> bool| actions.iter().filter(|a| f(a)).count();
    let starts = count(|a| matches!(a, Action::Start { .. }));
    let handoffs = count(|a| matches!(a, Action::Handoff { .. }));
    let stops = count(|a| matches!(a, Action::Stop { .. }));
    let refusals = count(|a| matches!(a, Action::Refuse { .. }));
    if actions.is_empty() {
        return format!("{what}: nothing to do");
    }
    let mut parts = Vec::new();
    for (n, word) in
        [(starts, "start"), (handoffs, "handoff"), (stops, "stop"), (refusals, "refusal")]
    {
        if n > 0 {
            parts.push(format!("{n} {word}{}", if n == 1 { "" } else { "s" }));
        }
    }
    format!("{what}: {}", parts.join(", "))
}
