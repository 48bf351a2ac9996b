//! The desktop broker: assigns each thin client a desktop VM and keeps it reachable.

pub mod proxy;
