//! Who sits at which PC. A person's desktop follows them: a login at a second PC takes it
//! from the first (which goes back to its login screen), and after a logout or when their PC
//! goes away it keeps running for a grace period, so that logging in again anywhere is
//! instant. No I/O: the caller carries out the [`Effect`]s and brings the clock.
//!
//! A PC is named by its MAC and the id of its agent connection, so that the end of an old
//! connection does not log out whoever logged in on the newer one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the caller must do after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `person` moved on from PC `from` (to the PC of the login): show `from` its login
    /// screen again, saying so.
    Moved { person: String, from: String },
    /// `person` was logged out of the PC of the login, to make room for someone else; their
    /// desktop is in grace.
    Replaced { person: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seat {
    conn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Whereabouts {
    At { pc: String },
    /// Logged out or their PC left; the desktop stops at this instant.
    Grace(Instant),
}

#[derive(Debug)]
pub struct Seats {
    grace: Duration,
    /// PC (MAC) to the person sitting there.
    pcs: HashMap<String, (String, Seat)>,
    people: HashMap<String, Whereabouts>,
}

impl Seats {
    pub fn new(grace: Duration) -> Self {
        Seats { grace, pcs: HashMap::new(), people: HashMap::new() }
    }

    /// `person` logged in at `pc` over connection `conn`.
    pub fn login(&mut self, pc: &str, conn: u64, person: &str, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some((other, _)) = self.pcs.remove(pc) {
            if other != person {
                self.people.insert(other.clone(), Whereabouts::Grace(now + self.grace));
                effects.push(Effect::Replaced { person: other });
            }
        }
        if let Some(Whereabouts::At { pc: old }) = self.people.get(person) {
            if old != pc {
                let old = old.clone();
                self.pcs.remove(&old);
                effects.push(Effect::Moved { person: person.to_string(), from: old });
            }
        }
        self.pcs.insert(pc.to_string(), (person.to_string(), Seat { conn }));
        self.people.insert(person.to_string(), Whereabouts::At { pc: pc.to_string() });
        effects
    }

    /// `person`'s desktop runs but they sit nowhere (it came back from the session store after
    /// a restart): it waits for them like after a logout. Someone already seated is left be.
    pub fn waiting(&mut self, person: &str, now: Instant) {
        self.people.entry(person.to_string()).or_insert(Whereabouts::Grace(now + self.grace));
    }

    /// Whoever sits at `pc` logs out; their desktop goes into grace. Returns them.
    pub fn logout(&mut self, pc: &str, now: Instant) -> Option<String> {
        let (person, _) = self.pcs.remove(pc)?;
        self.people.insert(person.clone(), Whereabouts::Grace(now + self.grace));
        Some(person)
    }

    /// Connection `conn` of `pc` ended: like a logout, unless a newer connection of the same
    /// PC has a login of its own.
    pub fn pc_gone(&mut self, pc: &str, conn: u64, now: Instant) -> Option<String> {
        match self.pcs.get(pc) {
            Some((_, seat)) if seat.conn == conn => self.logout(pc, now),
            _ => None,
        }
    }

    /// The people whose grace ended by `now`: stop their desktops. They are forgotten.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone: Vec<String> = self
            .people
            .iter()
            .filter(|(_, w)| matches!(w, Whereabouts::Grace(t) if *t <= now))
            .map(|(p, _)| p.clone())
            .collect();
        gone.sort();
        for p in &gone {
            self.people.remove(p);
        }
        gone
    }

    /// The PC where `person` sits.
    pub fn pc_of(&self, person: &str) -> Option<&str> {
        match self.people.get(person)? {
            Whereabouts::At { pc } => Some(pc),
            Whereabouts::Grace(_) => None,
        }
    }

    /// Who sits at `pc`.
    pub fn person_at(&self, pc: &str) -> Option<&str> {
        self.pcs.get(pc).map(|(p, _)| p.as_str())
    }

    /// Everyone seated or in grace: the people whose desktops run.
    /// How many people sit at a PC now.
    pub fn seated(&self) -> usize {
        self.pcs.len()
    }

    pub fn people(&self) -> impl Iterator<Item = &str> {
        self.people.keys().map(String::as_str)
    }

    /// Whether `person`'s desktop is in grace.
    pub fn in_grace(&self, person: &str) -> bool {
        matches!(self.people.get(person), Some(Whereabouts::Grace(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn roaming_moves_the_person_and_frees_the_first_pc() {
        let t0 = Instant::now();
        let mut s = Seats::new(GRACE);
        assert_eq!(s.login("pc1", 1, "alice", t0), vec![]);
        assert_eq!(s.login("pc2", 2, "alice", t0), vec![Effect::Moved { person: "alice".into(), from: "pc1".into() }]);
        assert_eq!(s.person_at("pc1"), None);
        assert_eq!(s.pc_of("alice"), Some("pc2"));
        // The end of pc1's connection does not touch alice, now at pc2.
        assert_eq!(s.pc_gone("pc1", 1, t0), None);
        assert_eq!(s.pc_of("alice"), Some("pc2"));
        assert_eq!(s.expire(t0 + GRACE * 2), Vec::<String>::new());
    }

    #[test]
    fn a_login_at_an_occupied_pc_logs_the_other_person_out_into_grace() {
        let t0 = Instant::now();
        let mut s = Seats::new(GRACE);
        s.login("pc1", 1, "alice", t0);
        assert_eq!(s.login("pc1", 1, "bob", t0), vec![Effect::Replaced { person: "alice".into() }]);
        assert!(s.in_grace("alice"));
        assert_eq!(s.person_at("pc1"), Some("bob"));
        assert_eq!(s.expire(t0 + GRACE - Duration::from_millis(1)), Vec::<String>::new());
        assert_eq!(s.expire(t0 + GRACE), vec!["alice".to_string()]);
        assert!(!s.in_grace("alice"));
    }

    #[test]
    fn a_login_within_grace_cancels_the_stop_and_an_old_connection_cannot_log_out_a_new_one() {
        let t0 = Instant::now();
        let mut s = Seats::new(GRACE);
        s.login("pc1", 1, "alice", t0);
        assert_eq!(s.logout("pc1", t0), Some("alice".into()));
        assert_eq!(s.logout("pc1", t0), None);
        s.login("pc2", 5, "alice", t0 + GRACE / 2);
        assert_eq!(s.expire(t0 + GRACE * 3), Vec::<String>::new());
        // pc2 reconnected (conn 6) and alice logged in again there before conn 5 ended.
        s.login("pc2", 6, "alice", t0);
        assert_eq!(s.pc_gone("pc2", 5, t0), None);
        assert_eq!(s.pc_gone("pc2", 6, t0), Some("alice".into()));
        assert!(s.in_grace("alice"));
    }

    #[test]
    fn a_recovered_desktop_waits_for_its_person_like_after_a_logout() {
        let t0 = Instant::now();
        let mut s = Seats::new(GRACE);
        s.login("pc1", 1, "bob", t0);
        s.waiting("bob", t0);
        s.waiting("alice", t0);
        assert_eq!(s.pc_of("bob"), Some("pc1"));
        assert!(s.in_grace("alice"));
        s.login("pc2", 2, "alice", t0 + GRACE / 2);
        assert_eq!(s.expire(t0 + GRACE), Vec::<String>::new());
        s.waiting("carol", t0);
        assert_eq!(s.expire(t0 + GRACE), vec!["carol".to_string()]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Login(u8, u8),
        Logout(u8),
        Gone(u8),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u8..4).prop_map(|(pc, p)| Op::Login(pc, p)),
            (0u8..4).prop_map(Op::Logout),
            (0u8..4).prop_map(Op::Gone),
            (0u16..1200).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Against a plain model: one seat per person and per PC, a desktop runs while its
        /// person sits or is in grace, and it is stopped exactly once, when grace ends.
        #[test]
        fn seats_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = Seats::new(GRACE);
            // person -> Some(pc) seated, None in grace since; running desktops.
            let mut running: HashMap<String, Option<String>> = HashMap::new();
            let mut grace_end: HashMap<String, Instant> = HashMap::new();
            let conn = 1;
            for op in ops {
                match op {
                    Op::Login(pc, p) => {
                        let (pc, p) = (format!("pc{pc}"), format!("p{p}"));
                        let effects = s.login(&pc, conn, &p, now);
                        for e in effects {
                            match e {
                                Effect::Moved { person, from } => {
                                    prop_assert_eq!(&person, &p);
                                    prop_assert_ne!(&from, &pc);
                                }
                                Effect::Replaced { person } => {
                                    prop_assert_ne!(&person, &p);
                                    running.insert(person.clone(), None);
                                    grace_end.insert(person, now + GRACE);
                                }
                            }
                        }
                        running.insert(p.clone(), Some(pc));
                        grace_end.remove(&p);
                    }
                    Op::Logout(pc) | Op::Gone(pc) => {
                        let pc = format!("pc{pc}");
                        let out = if matches!(op, Op::Logout(_)) { s.logout(&pc, now) } else { s.pc_gone(&pc, conn, now) };
                        let seated = running.iter().find(|(_, w)| w.as_deref() == Some(pc.as_str())).map(|(p, _)| p.clone());
                        prop_assert_eq!(&out, &seated);
                        if let Some(p) = out {
                            running.insert(p.clone(), None);
                            grace_end.insert(p, now + GRACE);
                        }
                    }
                    Op::Wait(secs) => {
                        now += Duration::from_secs(secs.into());
                        let stopped = s.expire(now);
                        let mut want: Vec<String> = grace_end.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
                        want.sort();
                        prop_assert_eq!(&stopped, &want);
                        for p in stopped {
                            prop_assert!(running.remove(&p).unwrap().is_none(), "stopped a seated person");
                            grace_end.remove(&p);
                        }
                    }
                }
                for (p, w) in &running {
                    prop_assert_eq!(s.pc_of(p), w.as_deref());
                    prop_assert_eq!(s.in_grace(p), w.is_none());
                    if let Some(pc) = w {
                        prop_assert_eq!(s.person_at(pc), Some(p.as_str()));
                    }
                }
                let seated = running.values().filter(|w| w.is_some()).count();
                prop_assert_eq!(s.pcs.len(), seated);
                prop_assert_eq!(s.people.len(), running.len());
            }
        }
    }
}
