#![allow(non_local_definitions)] // upstream derives inside macro-generated consts
#![cfg_attr(feature = "strict", deny(warnings))]

pub mod context;
pub mod rpc;
pub mod rpcwire;
mod write_counter;
pub mod xdr;

mod mount;
mod mount_handlers;

mod portmap;
mod portmap_handlers;

pub mod nfs;
mod nfs_handlers;

#[cfg(not(target_os = "windows"))]
pub mod fs_util;

pub mod tcp;
pub mod vfs;
