//! `bootserver plan`: runs the memory algorithm on users arriving one by one and prints each
//! step as a row of the paper's Table 3 (allocations newest first, free memory), with every
//! action's reason on request, so an admin can see what a configuration will do.

use std::fmt::Write as _;

use anyhow::Context;

use super::memory::{ApplyError, Decision, Event, Levels, PlanError, Planner, State};
use super::size::{gib_number, parse_size, Bytes};

/// Show what the memory algorithm does as users arrive one by one.
///
/// Example (the paper's Table 3): bootserver plan --hosts 3 --host-mem 2GiB --levels 3 --users 13
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Number of virtualization hosts.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Memory each host gives to desktop VMs, e.g. 2GiB or 1536MiB.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    pub host_mem: u64,
    /// Number of memory levels, each half the one before, starting at --max-vm.
    #[arg(long, default_value_t = 3)]
    pub levels: usize,
    /// Size of the largest level. Default: --host-mem.
    #[arg(long, value_parser = parse_size)]
    pub max_vm: Option<u64>,
    /// Explicit level sizes, largest first, instead of --levels and --max-vm,
    /// e.g. 2GiB,1GiB,512MiB.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub level_sizes: Vec<u64>,
    /// Users arriving one by one (u1, u2, ...).
    #[arg(long, default_value_t = 12)]
    pub users: usize,
    /// Print every action of each step with its reason.
    #[arg(long)]
    pub explain: bool,
    /// Print each step's decision as one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One arrival and where it left everybody.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which arrival this is (1 for u1).
    pub arrival: usize,
    /// Users connected after this step.
    pub users: usize,
    /// Every user's VM size in bytes, newest first.
    pub allocations: Vec<u64>,
    /// Free bytes over all hosts that are up.
    pub free: u64,
    pub decision: Decision,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The planner checks its own plans, so this is a bug worth a clear report.
    #[error("the plan for {user} cannot be carried out: {source}")]
    Apply { user: String, source: Box<ApplyError> },
}

/// Users `u1..=uN` arrive one by one on `state`; one row per arrival, refused ones included.
pub fn arrivals(
    planner: &Planner,
    mut state: State,
    users: usize,
) -> Result<Vec<Row>, ExplainError> {
    let mut rows = Vec::with_capacity(users);
    for i in 1..=users {
        let user = format!("u{i}");
        let decision = planner.decide(&state, &Event::Arrive { user: user.clone() })?;
        state
            .apply(&planner.levels, &decision)
            .map_err(|e| ExplainError::Apply { user, source: Box::new(e) })?;
        let allocations =
            state.newest_first().iter().map(|u| planner.levels.size(u.level)).collect();
        let free = state.total_free(&planner.levels);
        rows.push(Row { arrival: i, users: state.users.len(), allocations, free, decision });
    }
    Ok(rows)
}

/// Renders rows the way the paper's Table 3 reads (GiB).
pub fn render_table(rows: &[Row], explain: bool) -> String {
    let mut out = String::from("users | allocations, newest first (GiB) | free (GiB)\n");
    for row in rows {
        if let Some(message) = row.decision.refusal() {
            let _ = writeln!(out, "{:>5} | refused u{}: {message}", row.users + 1, row.arrival);
        } else {
            let alloc: Vec<String> = row.allocations.iter().map(|&b| gib_number(b)).collect();
            let _ =
                writeln!(out, "{:>5} | {} | {}", row.users, alloc.join(" "), gib_number(row.free));
        }
        if explain {
            for a in &row.decision.actions {
                let _ = writeln!(out, "      - {a}");
            }
        }
    }
    out
}

/// The `bootserver plan` command.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let levels = if args.level_sizes.is_empty() {
        Levels::halving(args.max_vm.unwrap_or(args.host_mem), args.levels)
    } else {
        Levels::explicit(args.level_sizes.clone())
    }
    .context("invalid memory levels (--levels, --max-vm, --level-sizes)")?;
    if args.hosts == 0 {
        anyhow::bail!("--hosts must be at least 1");
    }
    let planner = Planner::new(levels);
    let state = State::uniform(args.hosts, args.host_mem);
    let sizes: Vec<String> = planner.levels.sizes().iter().map(|&b| Bytes(b).to_string()).collect();
    let rows = arrivals(&planner, state, args.users)?;
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(&row.decision)?);
        }
    } else {
        println!("{} hosts of {}, levels {}", args.hosts, Bytes(args.host_mem), sizes.join(" / "));
        print!("{}", render_table(&rows, args.explain));
    }
    Ok(())
}
