//! Any byte stream on the NFS port: record marking, the RPC header and credentials, the
//! NFS and MOUNT arguments (answered from a small read-only export); and the same bytes as
//! a portmapper datagram. Nothing may panic or allocate past the record limits. Run with
//! `cargo +nightly fuzz run nfs_rpc -- -rss_limit_mb=512` in bootserver/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bootserver::nfs::fuzz_one(data);
});
