mod cursor;
mod raw;
mod tight;
mod trle;
mod zlib;
mod zrle;
use crate::{Rect, VncError};
use tokio::io::{AsyncRead, AsyncReadExt};
pub(crate) use cursor::Decoder as CursorDecoder;
pub(crate) use raw::Decoder as RawDecoder;
pub(crate) use tight::Decoder as TightDecoder;
pub(crate) use trle::Decoder as TrleDecoder;
pub(crate) use zrle::Decoder as ZrleDecoder;

/// Decoded rectangles are often desktop-sized (8 MiB at 1920x1080). A fresh allocation of that
/// size is a fresh mapping whose every page faults in zeroed, which cost more than decoding a
/// Tight rectangle; buffers a [crate::PixelSink] is done with come back here instead.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Decoders that can hand over a large rectangle in bands of rows use bands of about this size.
const STRIP_BYTES: usize = 256 * 1024;

/// `rect` cut into bands of whole rows of about [STRIP_BYTES] (`row_bytes` per row).
fn strips(rect: &Rect, row_bytes: usize) -> impl Iterator<Item = Rect> {
    let rows = (STRIP_BYTES / row_bytes.max(1)).clamp(1, usize::from(u16::MAX)) as u16;
    let rect = *rect;
    (0..rect.height).step_by(rows.into()).map(move |y| Rect {
        y: rect.y + y,
        height: (rect.height - y).min(rows),
        ..rect
    })
}

/// A rectangle's pixels and its compressed data are the most a decoder holds at once.
const POOL_SIZE: usize = 2;

fn pooled() -> Vec<u8> {
    let mut v = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
        .unwrap_or_default();
    v.clear();
    v
}

fn initialized_vec(len: usize) -> Vec<u8> {
    let mut v = pooled();
    v.resize(len, 0);
    v
}

fn vec_with_capacity(cap: usize) -> Vec<u8> {
    let mut v = pooled();
    v.reserve(cap);
    v
}

/// Reads the `len` bytes a header announced. The buffer grows with the bytes that arrive, not
/// with the header: sized from the header up front (and zeroed), four bytes of a hostile server
/// cost the client up to [crate::limits::MAX_COMPRESSED] of memory before any data came.
async fn read_announced<S: AsyncRead + Unpin>(input: &mut S, len: usize) -> Result<Vec<u8>, VncError> {
    let mut v = pooled();
    (&mut *input).take(len as u64).read_to_end(&mut v).await?;
    if v.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(v)
}

/// Inflates the `len` bytes a rectangle's header implies, growing with what the compressed data
/// really yields (see [read_announced]).
fn inflate_announced<R: std::io::Read>(reader: &mut R, len: usize) -> Result<Vec<u8>, VncError> {
    let mut v = pooled();
    std::io::Read::read_to_end(&mut std::io::Read::take(reader, len as u64), &mut v)?;
    if v.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(v)
}

/// Gives a buffer back for the next rectangle.
pub(crate) fn recycle(v: Vec<u8>) {
    let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.len() < POOL_SIZE && v.capacity() > 0 {
        pool.push(v);
    }
}

#[cfg(test)]
mod tests;
