use crate::{PixelFormat, Rect, VncError, VncEvent};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{initialized_vec, strips};

pub struct Decoder {}

impl Decoder {
    pub fn new() -> Self {
        Self {}
    }

    pub async fn decode<S, F, Fut>(
        &mut self,
        format: &PixelFormat,
        rect: &Rect,
        input: &mut S,
        output_func: &F,
    ) -> Result<(), VncError>
    where
        S: AsyncRead + Unpin,
        F: Fn(VncEvent) -> Fut,
        Fut: Future<Output = Result<(), VncError>>,
    {
        crate::limits::dimensions(rect.width, rect.height)?;
        format.validate()?;
        // +----------------------------+--------------+-------------+
        // | No. of bytes               | Type [Value] | Description |
        // +----------------------------+--------------+-------------+
        // | width*height*bytesPerPixel | PIXEL array  | pixels      |
        // +----------------------------+--------------+-------------+
        // Handed over a band of rows at a time: one buffer for a full-screen rectangle would be
        // desktop-sized (8 MiB at 1920x1080) on top of the frontend's own copy.
        let row = (format.bits_per_pixel / 8) as usize * rect.width as usize;
        for strip in strips(rect, row) {
            let mut pixels = initialized_vec(row * strip.height as usize);
            input.read_exact(&mut pixels).await?;
            output_func(VncEvent::RawImage(strip, pixels)).await?;
        }
        Ok(())
    }
}
