use crate::Rect;

/// A frontend's own copy of the desktop, written by the decoding task itself.
///
/// Without one, decoded pixels travel to [crate::VncClient::recv_event] as events, each in a
/// buffer of its own that the frontend then copies into its framebuffer; several
/// desktop-sized buffers can be in flight at once. With a sink, pixels, copies and size
/// changes are applied here, in order, as each rectangle is decoded, and the decoder's buffers
/// are reused for the next rectangle. Events that remain (`UpdateEnd`, `SetResolution` and
/// `DesktopUpdate` after the sink has seen them, cursor, bell, text) still come as events.
///
/// The methods run on the decoding task: they should only copy, never wait for long.
pub trait PixelSink: Send + Sync {
    /// The desktop is now this size (server init, DesktopSize or ExtendedDesktopSize).
    fn resize(&self, width: u16, height: u16);
    /// Pixels of `rect` in the client's pixel format, one row after the other.
    fn put(&self, rect: Rect, pixels: &[u8]) -> Result<(), String>;
    /// CopyRect: `dst` takes the pixels at `src` (same size; they may overlap).
    fn copy(&self, dst: Rect, src: Rect) -> Result<(), String>;
    /// A Tight JPEG rectangle, still compressed. The sink may decode it later, elsewhere, as
    /// long as it is in place when [`flush`](Self::flush) returns.
    fn jpeg(&self, rect: Rect, jpeg: &[u8]) -> Result<(), String>;
    /// The end of a FramebufferUpdate: called before `VncEvent::UpdateEnd` is sent, so a
    /// sink that defers work (JPEG rectangles decoded on other threads) finishes it here.
    fn flush(&self) -> Result<(), String> {
        Ok(())
    }
}
