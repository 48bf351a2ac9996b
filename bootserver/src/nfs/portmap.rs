//! Portmapper (RPC program 100000, version 2, RFC 1833) over UDP: answers GETPORT for our NFS
//! and MOUNT programs so that clients which look ports up over UDP find them. TCP lookups are
//! answered by the NFS listener itself on port 111.

pub const PMAP_PORT: u16 = 111;
const PMAP_PROG: u32 = 100_000;
const NFS_PROG: u32 = 100_003;
const MOUNT_PROG: u32 = 100_005;
const IPPROTO_TCP: u32 = 6;
const CALL: u32 = 0;
const REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const SUCCESS: u32 = 0;
const PROG_UNAVAIL: u32 = 1;
const PROG_MISMATCH: u32 = 2;
const PROC_UNAVAIL: u32 = 3;
const GARBAGE_ARGS: u32 = 4;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortmapError {
    #[error("datagram too short for an RPC call")]
    Truncated,
    #[error("not an RPC call")]
    NotACall,
    #[error("RPC version {0}, want 2")]
    RpcVersion(u32),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, PortmapError> {
        let (head, rest) = self.0.split_first_chunk::<4>().ok_or(PortmapError::Truncated)?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }

    /// Skips an opaque_auth (flavor, then a length-prefixed, padded body of at most 400 bytes).
    fn skip_auth(&mut self) -> Result<(), PortmapError> {
        self.u32()?;
        let len = self.u32()? as usize;
        if len > 400 {
            return Err(PortmapError::Truncated);
        }
        let padded = (len + 3) & !3;
        self.0 = self.0.get(padded..).ok_or(PortmapError::Truncated)?;
        Ok(())
    }
}

/// The reply to one UDP datagram, or why it was dropped. `nfs_port` serves NFS v3 and MOUNT
/// v1-3 over TCP.
pub fn reply(request: &[u8], nfs_port: u16) -> Result<Vec<u8>, PortmapError> {
    let mut r = Reader(request);
    let xid = r.u32()?;
    if r.u32()? != CALL {
        return Err(PortmapError::NotACall);
    }
    let rpcvers = r.u32()?;
    if rpcvers != 2 {
        return Err(PortmapError::RpcVersion(rpcvers));
    }
    let (prog, vers, procedure) = (r.u32()?, r.u32()?, r.u32()?);
    r.skip_auth()?;
    r.skip_auth()?;
    let mut out = Vec::with_capacity(32);
    for w in [xid, REPLY, MSG_ACCEPTED, 0, 0] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    let mut push = |w: u32| out.extend_from_slice(&w.to_be_bytes());
    if prog != PMAP_PROG {
        push(PROG_UNAVAIL);
    } else if vers != 2 {
        push(PROG_MISMATCH);
        push(2);
        push(2);
    } else {
        match procedure {
            0 => push(SUCCESS),
            3 => match (r.u32(), r.u32(), r.u32(), r.u32()) {
                (Ok(p), Ok(v), Ok(prot), Ok(_)) => {
                    let served = prot == IPPROTO_TCP
                        && ((p == NFS_PROG && v == 3) || (p == MOUNT_PROG && (1..=3).contains(&v)));
                    push(SUCCESS);
                    push(if served { nfs_port as u32 } else { 0 });
                }
                _ => push(GARBAGE_ARGS),
            },
            _ => push(PROC_UNAVAIL),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, vers: u32, procedure: u32, args: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        // xid, CALL, rpcvers, prog, vers, proc, cred AUTH_UNIX with 8 bytes, verf AUTH_NULL
        for w in [0x1234_5678, 0, 2, prog, vers, procedure, 1, 8, 0xdead, 0xbeef, 0, 0] {
            v.extend_from_slice(&u32::to_be_bytes(w));
        }
        for w in args {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v
    }

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn getport() {
        let r = reply(&call(PMAP_PROG, 2, 3, &[NFS_PROG, 3, 6, 0]), 2049).unwrap();
        assert_eq!(words(&r), vec![0x1234_5678, 1, 0, 0, 0, 0, 2049]);
        let r = reply(&call(PMAP_PROG, 2, 3, &[MOUNT_PROG, 3, 6, 0]), 2049).unwrap();
        assert_eq!(words(&r)[6], 2049);
        // Not served over UDP, nor other programs.
        let r = reply(&call(PMAP_PROG, 2, 3, &[NFS_PROG, 3, 17, 0]), 2049).unwrap();
        assert_eq!(words(&r)[6], 0);
        let r = reply(&call(PMAP_PROG, 2, 3, &[100_021, 4, 6, 0]), 2049).unwrap();
        assert_eq!(words(&r)[6], 0);
    }

    #[test]
    fn other_calls() {
        assert_eq!(words(&reply(&call(PMAP_PROG, 2, 0, &[]), 1).unwrap())[5], SUCCESS);
        assert_eq!(words(&reply(&call(PMAP_PROG, 4, 3, &[]), 1).unwrap())[5..], [PROG_MISMATCH, 2, 2]);
        assert_eq!(words(&reply(&call(7, 2, 3, &[]), 1).unwrap())[5], PROG_UNAVAIL);
        assert_eq!(words(&reply(&call(PMAP_PROG, 2, 9, &[]), 1).unwrap())[5], PROC_UNAVAIL);
        assert_eq!(words(&reply(&call(PMAP_PROG, 2, 3, &[1]), 1).unwrap())[5], GARBAGE_ARGS);
    }

    #[test]
    fn garbage_is_dropped() {
        assert_eq!(reply(&[], 1), Err(PortmapError::Truncated));
        assert_eq!(reply(&[0; 7], 1), Err(PortmapError::Truncated));
        let mut c = call(PMAP_PROG, 2, 3, &[]);
        c[7] = 1;
        assert_eq!(reply(&c, 1), Err(PortmapError::NotACall));
        let mut c = call(PMAP_PROG, 2, 3, &[]);
        c[11] = 3;
        assert_eq!(reply(&c, 1), Err(PortmapError::RpcVersion(3)));
        let mut c = call(PMAP_PROG, 2, 3, &[]);
        c[31] = 0xff; // credential length larger than the datagram
        assert_eq!(reply(&c, 1), Err(PortmapError::Truncated));
        for n in 0..60 {
            let c = call(PMAP_PROG, 2, 3, &[NFS_PROG, 3, 6, 0]);
            let _ = reply(&c[..n.min(c.len())], 1);
        }
    }
}
