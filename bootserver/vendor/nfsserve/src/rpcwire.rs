use anyhow::anyhow;
use std::io::Cursor;
use std::io::{Read, Write};
use tracing::{error, trace, warn};

use crate::context::RPCContext;
use crate::rpc::*;
use crate::xdr::*;

use crate::mount;
use crate::mount_handlers;

use crate::nfs;
use crate::nfs_handlers;

use crate::portmap;
use crate::portmap_handlers;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// Information from RFC 5531
// https://datatracker.ietf.org/doc/html/rfc5531

const NFS_ACL_PROGRAM: u32 = 100227;
const NFS_ID_MAP_PROGRAM: u32 = 100270;
const NFS_METADATA_PROGRAM: u32 = 200024;

async fn handle_rpc(
    input: &mut impl Read,
    output: &mut impl Write,
    mut context: RPCContext,
) -> Result<(), anyhow::Error> {
    let mut recv = rpc_msg::default();
    recv.deserialize(input)?;
    let xid = recv.xid;
    if let rpc_body::CALL(call) = recv.body {
        if let auth_flavor::AUTH_UNIX = call.cred.flavor {
            let mut auth = auth_unix::default();
            auth.deserialize(&mut Cursor::new(&call.cred.body))?;
            context.auth = auth;
        }
        if call.rpcvers != 2 {
            warn!("Invalid RPC version {} != 2", call.rpcvers);
            rpc_vers_mismatch(xid).serialize(output)?;
            return Ok(());
        }
        if call.prog == nfs::PROGRAM {
            nfs_handlers::handle_nfs(xid, call, input, output, &context).await
        } else if call.prog == portmap::PROGRAM {
            portmap_handlers::handle_portmap(xid, call, input, output, &context)
        } else if call.prog == mount::PROGRAM {
            mount_handlers::handle_mount(xid, call, input, output, &context).await
        } else if call.prog == NFS_ACL_PROGRAM
            || call.prog == NFS_ID_MAP_PROGRAM
            || call.prog == NFS_METADATA_PROGRAM
        {
            trace!("ignoring NFS_ACL packet");
            prog_unavail_reply_message(xid).serialize(output)?;
            Ok(())
        } else {
            warn!(
                "Unknown RPC Program number {} != {}",
                call.prog,
                nfs::PROGRAM
            );
            prog_unavail_reply_message(xid).serialize(output)?;
            Ok(())
        }
    } else {
        error!("Unexpectedly received a Reply instead of a Call");
        Err(anyhow!("Bad RPC Call format"))
    }
}

/// What a peer may send in one record. Every length on the wire is checked against these
/// before anything is allocated for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimits {
    /// Largest record (all its fragments together), in bytes.
    pub max_record: usize,
    /// Most fragments in one record.
    pub max_fragments: usize,
}

impl Default for RecordLimits {
    /// Room for a WRITE of 1 MiB (the largest `wtmax` a file system here advertises) and its
    /// header; the largest call any client sends.
    fn default() -> Self {
        RecordLimits {
            max_record: (1 << 20) + (64 << 10),
            max_fragments: 256,
        }
    }
}

/// Why a record was refused. The connection it came on is closed.
#[derive(Debug)]
pub enum RecordError {
    /// The fragments announced so far add up to more than the limit.
    TooLarge { announced: usize, max: usize },
    /// More fragments than the limit without a last one.
    TooManyFragments { max: usize },
    Io(std::io::Error),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::TooLarge { announced, max } => {
                write!(f, "record of {announced} bytes announced, at most {max} allowed")
            }
            RecordError::TooManyFragments { max } => {
                write!(f, "record of more than {max} fragments")
            }
            RecordError::Io(e) => write!(f, "reading a record: {e}"),
        }
    }
}

impl std::error::Error for RecordError {}

impl From<std::io::Error> for RecordError {
    fn from(e: std::io::Error) -> Self {
        RecordError::Io(e)
    }
}

/// Checks one fragment header (RFC 5531 section 11: the top bit marks the last fragment, the
/// other 31 bits are its length) against the limits, given the bytes and fragments of the
/// record so far. Returns the fragment's length and whether it is the last.
pub fn check_fragment(
    header: u32,
    record_len: usize,
    fragments: usize,
    limits: &RecordLimits,
) -> Result<(usize, bool), RecordError> {
    let is_last = header & (1 << 31) != 0;
    let length = (header & !(1 << 31)) as usize;
    if fragments >= limits.max_fragments {
        return Err(RecordError::TooManyFragments {
            max: limits.max_fragments,
        });
    }
    let announced = record_len.saturating_add(length);
    if announced > limits.max_record {
        return Err(RecordError::TooLarge {
            announced,
            max: limits.max_record,
        });
    }
    Ok((length, is_last))
}

/// Reads one whole record (all its fragments) into `record`, which is cleared first. Memory
/// grows with the bytes that arrive, never ahead of them, so a peer that announces a long
/// fragment and stops costs no more than what it sent.
pub async fn read_record<R: AsyncRead + Unpin>(
    src: &mut R,
    limits: &RecordLimits,
    record: &mut Vec<u8>,
) -> Result<(), RecordError> {
    record.clear();
    let mut fragments = 0;
    loop {
        let header = src.read_u32().await?;
        let (length, is_last) = check_fragment(header, record.len(), fragments, limits)?;
        fragments += 1;
        trace!("Reading fragment length:{}, last:{}", length, is_last);
        let want = record.len() + length;
        (&mut *src).take(length as u64).read_to_end(record).await?;
        if record.len() != want {
            return Err(RecordError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if is_last {
            return Ok(());
        }
    }
}

/// Splits a byte stream into records, the way a connection reads it: the records read
/// before the first error (or the end), then that error if any. For tests and fuzzing.
pub fn split_records(
    mut stream: &[u8],
    limits: &RecordLimits,
) -> (Vec<Vec<u8>>, Option<RecordError>) {
    // Reading from a slice never waits, so no runtime is needed.
    futures::executor::block_on(async move {
        let mut out = Vec::new();
        while !stream.is_empty() {
            let mut record = Vec::new();
            match read_record(&mut stream, limits, &mut record).await {
                Ok(()) => out.push(record),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    })
}

/// Bytes kept free at the start of every reply buffer for its record mark, so that a reply
/// goes out in one write.
pub const RECORD_MARK_LEN: usize = 4;

/// Writes a reply whose first [`RECORD_MARK_LEN`] bytes are reserved for the record mark, as
/// one fragment with one write (two writes on a no-delay socket cost a syscall and a packet).
pub async fn write_fragment<W: AsyncWrite + Unpin>(
    socket: &mut W,
    buf: &mut [u8],
) -> Result<(), anyhow::Error> {
    let len = buf.len() - RECORD_MARK_LEN;
    if len >= 1 << 31 {
        return Err(anyhow!("reply of {len} bytes is too large for one fragment"));
    }
    // set the last flag
    let fragment_header = len as u32 + (1 << 31);
    buf[..RECORD_MARK_LEN].copy_from_slice(&fragment_header.to_be_bytes());
    trace!("Writing fragment length:{}", len);
    socket.write_all(buf).await?;
    Ok(())
}

/// A guess at the size of the reply to `fragment`, so that a READ's reply buffer is allocated
/// once instead of doubling its way up to a megabyte (each doubling copies the data again).
fn reply_capacity(fragment: &[u8]) -> usize {
    const SMALL: usize = 512;
    const NFSPROC3_READ: u32 = 6;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(fragment.get(at..at + 4)?.try_into().ok()?))
    };
    let skip_opaque = |at: usize| -> Option<usize> { Some(at + 4 + (word(at)? as usize).div_ceil(4) * 4) };
    // xid, CALL, rpcvers, prog, vers, proc, then credential and verifier (flavor, opaque body).
    let guess = (|| {
        if word(12)? != nfs::PROGRAM || word(20)? != NFSPROC3_READ {
            return None;
        }
        let verf = skip_opaque(24 + 4)?;
        let args = skip_opaque(verf + 4)?;
        // READ3args: file handle (opaque), offset (u64), count (u32).
        let count = word(skip_opaque(args)? + 8)?;
        Some(SMALL + (count as usize).min(4 << 20))
    })();
    guess.unwrap_or(SMALL)
}

/// Answers one record: the reply, with [`RECORD_MARK_LEN`] bytes reserved in front for
/// [`write_fragment`], or why the record was refused (then the connection is closed).
pub async fn handle_record(record: Vec<u8>, context: RPCContext) -> Result<Vec<u8>, anyhow::Error> {
    let capacity = RECORD_MARK_LEN + reply_capacity(&record);
    let mut write_buf: Vec<u8> = Vec::with_capacity(capacity);
    write_buf.resize(RECORD_MARK_LEN, 0);
    let mut write_cursor = Cursor::new(&mut write_buf);
    write_cursor.set_position(RECORD_MARK_LEN as u64);
    handle_rpc(&mut Cursor::new(record), &mut write_cursor, context).await?;
    Ok(write_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAST: u32 = 1 << 31;

    fn limits() -> RecordLimits {
        RecordLimits {
            max_record: 1000,
            max_fragments: 4,
        }
    }

    fn frag(last: bool, data: &[u8]) -> Vec<u8> {
        let mark = data.len() as u32 | if last { LAST } else { 0 };
        [&mark.to_be_bytes()[..], data].concat()
    }

    #[test]
    fn records_within_the_limits_are_read_whole() {
        let stream = [
            frag(false, b"ab"),
            frag(true, b"cd"),
            frag(true, &[9; 1000]),
        ]
        .concat();
        let (records, err) = split_records(&stream, &limits());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(records, vec![b"abcd".to_vec(), vec![9; 1000]]);
    }

    #[test]
    fn a_huge_record_mark_is_refused_before_reading() {
        // 2 GiB - 1 announced: refused on the header alone.
        let stream = [&(LAST | 0x7fff_ffff).to_be_bytes()[..], b"x"].concat();
        let (records, err) = split_records(&stream, &limits());
        assert!(records.is_empty());
        assert!(matches!(err, Some(RecordError::TooLarge { announced: 0x7fff_ffff, max: 1000 })));
        // Fragments that add up past the limit are refused too.
        let stream = [frag(false, &[1; 600]), frag(true, &[1; 600])].concat();
        let (_, err) = split_records(&stream, &limits());
        assert!(matches!(err, Some(RecordError::TooLarge { announced: 1200, .. })), "{err:?}");
    }

    #[test]
    fn endless_fragments_are_cut_off() {
        let stream: Vec<u8> = (0..100).flat_map(|_| frag(false, b"")).collect();
        let (records, err) = split_records(&stream, &limits());
        assert!(records.is_empty());
        assert!(matches!(err, Some(RecordError::TooManyFragments { max: 4 })), "{err:?}");
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_hang() {
        let stream = [&(LAST | 900).to_be_bytes()[..], &[0; 10]].concat();
        let (_, err) = split_records(&stream, &limits());
        assert!(matches!(err, Some(RecordError::Io(_))), "{err:?}");
        assert!(check_fragment(LAST | 5, 996, 0, &limits()).is_err());
        assert_eq!(check_fragment(LAST | 4, 996, 3, &limits()).unwrap(), (4, true));
        assert!(check_fragment(4, 0, 4, &limits()).is_err());
    }
}
