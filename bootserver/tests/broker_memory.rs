//! The memory algorithm against the paper's Table 3, and its invariants on random sequences of
//! arrivals, departures and host failures.

use bootserver::broker::explain::{arrivals, render_table};
use bootserver::broker::memory::{Action, Decision, Event, Levels, Planner, State};
use bootserver::broker::size::{GIB, MIB};
use proptest::prelude::*;

fn paper() -> (Planner, State) {
    (Planner::new(Levels::halving(2 * GIB, 3).unwrap()), State::uniform(3, 2 * GIB))
}

/// Table 3 of the paper (S = 3, 2 GiB per host), newest user first, in units of 0.5 GiB.
const TABLE3: [(&[u64], u64); 12] = [
    (&[4], 8),
    (&[4, 4], 4),
    (&[2, 4, 4], 2),
    (&[2, 2, 2, 4], 2),
    (&[2, 2, 2, 2, 2], 2),
    (&[1, 2, 2, 2, 2, 2], 1),
    (&[1, 1, 1, 2, 2, 2, 2], 1),
    (&[1, 1, 1, 1, 1, 2, 2, 2], 1),
    (&[1, 1, 1, 1, 1, 1, 1, 2, 2], 1),
    (&[1, 1, 1, 1, 1, 1, 1, 1, 1, 2], 1),
    (&[1; 11], 1),
    (&[1; 12], 0),
];

#[test]
fn reproduces_table_3_and_refuses_the_13th() {
    let (planner, state) = paper();
    let rows = arrivals(&planner, state, 13).unwrap();
    let half = 512 * MIB;
    for (i, (alloc, free)) in TABLE3.iter().enumerate() {
        let row = &rows[i];
        let want: Vec<u64> = alloc.iter().map(|u| u * half).collect();
        assert_eq!(row.users, i + 1, "row {}", i + 1);
        assert_eq!(row.allocations, want, "row {} allocations", i + 1);
        assert_eq!(row.free, free * half, "row {} free", i + 1);
        assert!(row.decision.refusal().is_none(), "row {}", i + 1);
        for a in &row.decision.actions {
            assert!(!a.reason().is_empty(), "row {}: {a:?} has no reason", i + 1);
        }
    }
    let last = &rows[12];
    assert_eq!(last.users, 12);
    let message = last.decision.refusal().expect("the 13th user is refused");
    assert!(message.contains("No desktop is free"), "{message}");
    assert!(message.contains("12 users"), "{message}");
    assert_eq!(last.decision.actions.len(), 1, "a refusal moves nobody: {:?}", last.decision);

    // The paper's narrative: the 4th user makes the newest 2 GiB user (u2) drop to 1 GiB.
    let fourth = &rows[3].decision.actions;
    assert!(matches!(&fourth[0], Action::Handoff { user, from_bytes, to_bytes, .. }
        if user == "u2" && *from_bytes == 2 * GIB && *to_bytes == GIB));
    assert!(
        matches!(&fourth[1], Action::Start { user, bytes, .. } if user == "u4" && *bytes == GIB)
    );

    let table = render_table(&rows, false);
    assert!(table.contains("    3 | 1 2 2 | 1\n"), "{table}");
    assert!(table.contains("   13 | refused u13: No desktop is free"), "{table}");
}

#[test]
fn users_grow_back_after_departures() {
    let (planner, state) = paper();
    let mut state =
        arrivals(&planner, state.clone(), 12).unwrap().into_iter().fold(state, |mut s, r| {
            s.apply(&planner.levels, &r.decision).unwrap();
            s
        });
    for i in 3..=12 {
        let d = planner.decide(&state, &Event::Leave { user: format!("u{i}") }).unwrap();
        state.apply(&planner.levels, &d).unwrap();
    }
    // Two users on 6 GiB: U_0 = 2, so both are back at 2 GiB and a free slot remains.
    for u in &state.users {
        assert_eq!(u.level, 0, "{u:?} did not grow back: {state:?}");
    }
    assert!(state.reserve_kept(&planner.levels));
    assert_eq!(state.total_free(&planner.levels), 2 * GIB);
}

#[test]
fn host_down_moves_its_users_elsewhere() {
    let (planner, state) = paper();
    let mut state = state;
    for i in 1..=4 {
        let d = planner.decide(&state, &Event::Arrive { user: format!("u{i}") }).unwrap();
        state.apply(&planner.levels, &d).unwrap();
    }
    let victim_host = state.user("u1").unwrap().host.clone();
    let displaced: Vec<String> =
        state.users.iter().filter(|u| u.host == victim_host).map(|u| u.id.clone()).collect();
    let d = planner.decide(&state, &Event::HostDown { host: victim_host.clone() }).unwrap();
    state.apply(&planner.levels, &d).unwrap();
    assert_eq!(state.users.len(), 4, "{d:?}");
    for u in &state.users {
        assert_ne!(u.host, victim_host);
    }
    for id in displaced {
        assert!(d.actions.iter().any(|a| matches!(a, Action::Start { user, .. } if *user == id)));
    }
    // Back up: the hosts regrow everybody to the 4-user level of 3 hosts (1 GiB).
    let d = planner.decide(&state, &Event::HostUp { host: victim_host }).unwrap();
    state.apply(&planner.levels, &d).unwrap();
    assert!(state.users.iter().all(|u| u.level <= 1), "{state:?}");
}

#[test]
fn decisions_serialize_for_the_admin_api() {
    let (planner, state) = paper();
    let d = planner.decide(&state, &Event::Arrive { user: "aa:bb".into() }).unwrap();
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["event"]["event"], "arrive");
    assert_eq!(json["actions"][0]["action"], "start");
    assert_eq!(json["actions"][0]["bytes"], 2 * GIB);
    let back: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
}

#[test]
fn caller_errors_are_errors_not_panics() {
    let (planner, mut state) = paper();
    assert!(planner.decide(&state, &Event::Leave { user: "x".into() }).is_err());
    assert!(planner.decide(&state, &Event::HostDown { host: "nope".into() }).is_err());
    let d = planner.decide(&state, &Event::Arrive { user: "x".into() }).unwrap();
    state.apply(&planner.levels, &d).unwrap();
    let again = planner.decide(&state, &Event::Arrive { user: "x".into() });
    assert!(again.unwrap_err().to_string().contains("already has a desktop"));
    // A replayed decision no longer fits the state it changed.
    assert!(state.apply(&planner.levels, &d).is_err());
    assert!(Levels::explicit(vec![GIB, 2 * GIB]).is_err());
    assert!(Levels::halving(3, 3).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Arrive,
    Leave(usize),
    HostDown(usize),
    HostUp(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Arrive),
        3 => any::<usize>().prop_map(Op::Leave),
        1 => any::<usize>().prop_map(Op::HostDown),
        1 => any::<usize>().prop_map(Op::HostUp),
    ]
}

/// A configuration: level sizes and host capacities in units of 256 MiB.
fn config() -> impl Strategy<Value = (bool, Levels, State)> {
    let uniform = (1usize..=4, 1usize..=4, 1u64..=3).prop_map(|(hosts, levels, max_units)| {
        let max = (1u64 << (levels - 1)) * max_units * 256 * MIB;
        (true, Levels::halving(max, levels).unwrap(), State::uniform(hosts, max))
    });
    let mixed = (
        proptest::collection::btree_set(1u64..=16, 1..=4),
        proptest::collection::vec(1u64..=24, 1..=4),
    )
        .prop_map(|(sizes, caps)| {
            let levels: Vec<u64> = sizes.into_iter().rev().map(|u| u * 256 * MIB).collect();
            let mut state = State::uniform(caps.len(), 0);
            for (h, c) in state.hosts.iter_mut().zip(caps) {
                h.capacity = c * 256 * MIB;
            }
            (false, Levels::explicit(levels).unwrap(), state)
        });
    prop_oneof![uniform, mixed]
}

/// Checks one decision against the invariants and returns the state after it.
fn check_step(uniform: bool, planner: &Planner, before: &State, ev: &Event, d: &Decision) -> State {
    let levels = &planner.levels;
    let lowest = levels.lowest();
    let mut after = before.clone();
    // Every action is feasible in order, handoffs counting both VMs.
    after.apply(levels, d).unwrap_or_else(|e| panic!("{e}\nbefore: {before:?}\n{d:#?}"));
    after.validate(levels).unwrap();

    for a in &d.actions {
        if let Action::Handoff { from_level, to_level, .. } = a {
            assert_eq!(from_level.abs_diff(*to_level), 1, "one level per handoff: {a:?}");
        }
        assert!(!a.reason().is_empty());
    }

    // Users who remain are never dropped; only a newcomer or a displaced user is refused.
    let (gone, down): (Option<&str>, Option<&str>) = match ev {
        Event::Leave { user } => (Some(user), None),
        Event::HostDown { host } => (None, Some(host)),
        _ => (None, None),
    };
    for u in &before.users {
        let displaced = Some(u.host.as_str()) == down;
        if Some(u.id.as_str()) != gone && !displaced {
            assert!(after.user(&u.id).is_some(), "{} was dropped by {d:#?}", u.id);
        }
    }

    let no_room_at_lowest =
        after.hosts.iter().all(|h| after.free(levels, &h.id) < levels.sizes()[lowest]);
    let all_lowest = after.users.iter().all(|u| u.level == lowest);
    if let Some(message) = d.refusal() {
        assert!(!message.is_empty());
        // A newcomer is refused only past capacity; a user whose host went down only when no
        // host has room even for the lowest level.
        // (A host failure that used up the reserve may leave nobody able to shrink; then
        // newcomers wait, with a message that says so.)
        let full = match ev {
            Event::HostDown { .. } => no_room_at_lowest,
            _ if !before.reserve_kept(levels) => {
                assert!(message.contains("host failure"), "{message}");
                true
            }
            _ => all_lowest && no_room_at_lowest,
        };
        if uniform || matches!(ev, Event::HostDown { .. }) {
            assert!(full, "refused with room left: {d:#?}\n{after:?}");
        }
    }

    // The reserve is kept while anyone is above the lowest level. A host going down may make
    // that impossible; then no handoff that could restore it is left undone.
    if before.reserve_kept(levels) && !matches!(ev, Event::HostDown { .. }) {
        assert!(after.reserve_kept(levels), "reserve lost: {before:?}\n{d:#?}\n{after:?}");
    }
    if !after.reserve_kept(levels) {
        for u in after.users.iter().filter(|u| u.level < lowest) {
            let next = levels.sizes()[u.level + 1];
            assert!(
                after.hosts.iter().all(|h| after.free(levels, &h.id) < next),
                "reserve not restored though {} could shrink: {after:?}",
                u.id
            );
        }
    }

    // After departures (or a host back), users below the level their number allows grow
    // back; on equal hosts with halving levels nothing can block that.
    if uniform && matches!(ev, Event::Leave { .. } | Event::HostUp { .. }) {
        if let Some(target) = after.level_for(levels, after.users.len()) {
            for u in &after.users {
                assert!(u.level <= target, "{} stuck below level {target}: {after:?}", u.id);
            }
        }
    }
    after
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_keep_the_invariants(
        (uniform, levels, start) in config(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let planner = Planner::new(levels);
        let mut state = start;
        let mut next = 0;
        for op in ops {
            let ev = match op {
                Op::Arrive => { next += 1; Event::Arrive { user: format!("u{next}") } }
                Op::Leave(i) if !state.users.is_empty() => {
                    Event::Leave { user: state.users[i % state.users.len()].id.clone() }
                }
                Op::Leave(_) => continue,
                Op::HostDown(i) => Event::HostDown { host: state.hosts[i % state.hosts.len()].id.clone() },
                Op::HostUp(i) => Event::HostUp { host: state.hosts[i % state.hosts.len()].id.clone() },
            };
            let d = planner.decide(&state, &ev).unwrap();
            state = check_step(uniform, &planner, &state, &ev, &d);
        }
    }
}
