//! The desktop broker's decision cores. Everything here is pure (state and event in, decision
//! out) so that it can be tested on its own and reused by tools that explain a decision.

pub mod explain;
pub mod listener;
pub mod memory;
mod placement;
pub mod registry;
pub mod size;
