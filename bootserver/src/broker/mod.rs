//! The desktop broker. The decision cores (memory, placement, explain) are pure: state and
//! event in, decision out, so that they can be tested on their own and reused by tools that
//! explain a decision. The proxy, the host registry and the orchestrator do the I/O.

pub mod admin_routes;
pub mod agent_tls;
pub mod enrolment;
pub mod explain;
pub mod flow;
pub mod hello_binding;
pub mod hosts;
pub mod listener;
pub mod login;
pub mod memory;
pub mod metrics;
pub mod orchestrator;
pub mod pcs;
pub mod pool;
mod placement;
pub mod proxy;
pub mod settings;
pub mod registry;
pub mod seats;
pub mod sessions;
pub mod size;
