//! Feeds arbitrary server-to-client RFB messages to the viewer's decoding path (vnc-rs: update
//! headers, Raw, CopyRect, ZRLE, TRLE, Tight, cursor, desktop-size and the other server
//! messages). A valid handshake for a 64x48 32 bpp desktop comes first, so the fuzzer spends
//! its time on the messages after it. Whatever the bytes, the client must end with events or
//! an error, never a panic or a hang.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vnc::{PixelFormat, VncConnector, VncEncoding};

/// The server's side of the connection: the bytes to replay; whatever the client sends is
/// dropped.
struct Replay {
    data: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// ProtocolVersion, security type None, SecurityResult OK, ServerInit (64x48, 32 bpp BGRX).
fn handshake() -> Vec<u8> {
    let mut v = b"RFB 003.008\n".to_vec();
    v.extend_from_slice(&[1, 1]);
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&64u16.to_be_bytes());
    v.extend_from_slice(&48u16.to_be_bytes());
    v.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    v.extend_from_slice(&4u32.to_be_bytes());
    v.extend_from_slice(b"fuzz");
    v
}

/// Everything the viewer can ask for; the first input byte picks which of them are offered, so
/// the fuzzer also meets servers that send what was not negotiated.
fn offered(mask: u16) -> Vec<VncEncoding> {
    // In the order of their numbers in the RFB registry.
    let all = [
        VncEncoding::Raw,
        VncEncoding::CopyRect,
        VncEncoding::Tight,
        VncEncoding::Trle,
        VncEncoding::Zrle,
        VncEncoding::DesktopSizePseudo,
        VncEncoding::LastRectPseudo,
        VncEncoding::CursorPseudo,
        VncEncoding::ExtendedDesktopSizePseudo,
        VncEncoding::jpeg_quality(8),
    ];
    all.into_iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, e)| e).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else { return };
    // Bits 0-7 choose among the first eight; the last two are always offered with Tight.
    let encodings = offered(u16::from(pick) | 0x300);
    let mut stream = handshake();
    stream.extend_from_slice(data);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    rt.block_on(async move {
        let mut c = VncConnector::new(Replay { data: stream, pos: 0 })
            .set_auth_method(async { Ok(String::new()) })
            .allow_shared(true)
            .set_pixel_format(PixelFormat::bgra());
        for e in encodings {
            c = c.add_encoding(e);
        }
        let Ok(state) = c.build() else { return };
        let Ok(started) = state.try_start().await else { return };
        let Ok(client) = started.finish() else { return };
        // The replayed stream ends, so the client must stop on its own; the timeout turns a
        // hang into a finding.
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while client.recv_event().await.is_ok() {}
        })
        .await;
        assert!(drained.is_ok(), "the client did not stop after the stream ended");
        let _ = client.close().await;
    });
});
