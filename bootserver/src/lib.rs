//! The boot server: network-boots diskless PCs (DHCP, TFTP, HTTP) and brokers their desktops.
//!
//! Protocol cores are pure (parse, decide, emit) and driven by thin tokio loops, so that each
//! can be tested with byte vectors and fuzzed.

pub mod accounts;
pub mod admin;
pub mod bootfiles;
pub mod broker;
pub mod ca;
pub mod config;
pub mod dhcp;
pub mod http;
pub mod logsafe;
pub mod net;
pub mod nfs;
pub mod ratelimit;
pub mod server;
pub mod stages;
pub mod statefile;
pub mod supervise;
pub mod tftp;
pub mod web;
