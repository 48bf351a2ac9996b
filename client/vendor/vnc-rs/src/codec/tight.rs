use crate::{PixelFormat, Rect, VncError, VncEvent};
use std::future::Future;
use std::io::Read;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::error;

use super::{
    inflate_announced, initialized_vec, read_announced, recycle, strips, vec_with_capacity,
    zlib::ZlibReader,
};

const MAX_PALETTE: usize = 256;

#[derive(Default)]
pub struct Decoder {
    zlibs: [Option<flate2::Decompress>; 4],
    ctrl: u8,
    filter: u8,
    palette: Vec<u8>,
    alpha_shift: u32,
}

impl Decoder {
    pub fn new() -> Self {
        let mut new = Self {
            palette: Vec::with_capacity(MAX_PALETTE * 4),
            ..Default::default()
        };
        for i in 0..4 {
            let decompressor = flate2::Decompress::new(true);
            new.zlibs[i] = Some(decompressor);
        }
        new
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
        if format.bits_per_pixel != 32
            || format.true_color_flag == 0
            || [format.red_max, format.green_max, format.blue_max] != [255; 3]
        {
            return Err(VncError::WrongPixelFormat);
        }
        let pixel_mask = ((format.red_max as u32) << format.red_shift)
            | ((format.green_max as u32) << format.green_shift)
            | ((format.blue_max as u32) << format.blue_shift);

        self.alpha_shift = match pixel_mask {
            0xff_ff_ff_00 => 0,
            0xff_ff_00_ff => 8,
            0xff_00_ff_ff => 16,
            0x00_ff_ff_ff => 24,
            _ => return Err(VncError::WrongPixelFormat),
        };

        let ctrl = input.read_u8().await?;
        for i in 0..4 {
            if (ctrl >> i) & 1 == 1 {
                self.zlibs[i] = Some(flate2::Decompress::new(true));
            }
        }

        // Figure out filter
        self.ctrl = ctrl >> 4;

        match self.ctrl {
            8 => {
                // fill Rect
                self.fill_rect(format, rect, input, output_func).await
            }
            9 => {
                // jpeg Rect
                self.jpeg_rect(format, rect, input, output_func).await
            }
            10 => {
                // png Rect
                error!("PNG received in standard Tight rect");
                Err(VncError::InvalidImageData)
            }
            x if x & 0x8 == 0 => {
                // basic Rect
                self.basic_rect(format, rect, input, output_func).await
            }
            _ => {
                error!("Illegal tight compression received ({})", self.ctrl);
                Err(VncError::InvalidImageData)
            }
        }
    }

    async fn read_data<S>(&mut self, input: &mut S) -> Result<Vec<u8>, VncError>
    where
        S: AsyncRead + Unpin,
    {
        let len = {
            let mut len;
            let mut byte = input.read_u8().await? as usize;
            len = byte & 0x7f;
            if byte & 0x80 == 0x80 {
                byte = input.read_u8().await? as usize;
                len |= (byte & 0x7f) << 7;

                if byte & 0x80 == 0x80 {
                    byte = input.read_u8().await? as usize;
                    len |= byte << 14;
                }
            }
            len
        };
        read_announced(input, len).await
    }

    /// Appends 3-byte pixels (R, G, B) to `image` in the client's pixel format.
    fn push_pixels(&self, format: &PixelFormat, bgra: bool, data: &[u8], image: &mut Vec<u8>) {
        if bgra {
            // B, G, R, A in memory (what viewers usually ask for): a plain byte shuffle.
            for p in data.chunks_exact(3) {
                image.extend_from_slice(&[p[2], p[1], p[0], 255]);
            }
        } else {
            for p in data.chunks_exact(3) {
                image.extend_from_slice(&self.to_true_color(format, p));
            }
        }
    }

    async fn fill_rect<S, F, Fut>(
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
        let mut color = [0; 3];
        input.read_exact(&mut color).await?;
        let bpp = format.bits_per_pixel as usize / 8;
        let true_color = self.to_true_color(format, &color);
        for strip in strips(rect, rect.width as usize * bpp) {
            let mut image = vec_with_capacity(strip.width as usize * strip.height as usize * bpp);
            for _ in 0..strip.width as usize * strip.height as usize {
                image.extend_from_slice(&true_color);
            }
            output_func(VncEvent::RawImage(strip, image)).await?;
        }
        Ok(())
    }

    async fn jpeg_rect<S, F, Fut>(
        &mut self,
        _format: &PixelFormat,
        rect: &Rect,
        input: &mut S,
        output_func: &F,
    ) -> Result<(), VncError>
    where
        S: AsyncRead + Unpin,
        F: Fn(VncEvent) -> Fut,
        Fut: Future<Output = Result<(), VncError>>,
    {
        let data = self.read_data(input).await?;
        output_func(VncEvent::JpegImage(*rect, data)).await?;
        Ok(())
    }

    async fn basic_rect<S, F, Fut>(
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
        self.filter = {
            if self.ctrl & 0x4 == 4 {
                input.read_u8().await?
            } else {
                0
            }
        };

        let stream_id = self.ctrl & 0x3;
        match self.filter {
            0 => {
                // copy filter
                self.copy_filter(stream_id, format, rect, input, output_func)
                    .await
            }
            1 => {
                // palette
                self.palette_filter(stream_id, format, rect, input, output_func)
                    .await
            }
            2 => {
                // gradient
                self.gradient_filter(stream_id, format, rect, input, output_func)
                    .await
            }
            _ => {
                error!("Illegal tight filter received (filter: {})", self.filter);
                Err(VncError::InvalidImageData)
            }
        }
    }

    async fn copy_filter<S, F, Fut>(
        &mut self,
        stream: u8,
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
        let uncompressed_size = rect.width as usize * rect.height as usize * 3;
        if uncompressed_size == 0 {
            return Ok(());
        };

        let bgra =
            (format.red_shift, format.green_shift, format.blue_shift, self.alpha_shift) == (16, 8, 0, 24);
        if uncompressed_size < 12 {
            let mut data = [0; 12];
            input.read_exact(&mut data[..uncompressed_size]).await?;
            let mut image = vec_with_capacity(uncompressed_size / 3 * 4);
            self.push_pixels(format, bgra, &data[..uncompressed_size], &mut image);
            output_func(VncEvent::RawImage(*rect, image)).await?;
            return Ok(());
        }
        // Inflated a slice at a time straight into the pixels, handed over a band of rows at a
        // time: whole-rectangle buffers would be 6 MiB (inflated) and 8 MiB (pixels) at
        // 1920x1080, touched once.
        let d = self.read_data(input).await?;
        let mut reader = ZlibReader::new(
            self.zlibs[stream as usize]
                .take()
                .ok_or(VncError::InvalidImageData)?,
            &d,
        );
        let mut chunk = [0; 3 * 4096];
        for strip in strips(rect, rect.width as usize * 4) {
            let mut left = strip.width as usize * strip.height as usize * 3;
            let mut image = vec_with_capacity(left / 3 * 4);
            while left > 0 {
                let n = left.min(chunk.len());
                reader.read_exact(&mut chunk[..n])?;
                self.push_pixels(format, bgra, &chunk[..n], &mut image);
                left -= n;
            }
            output_func(VncEvent::RawImage(strip, image)).await?;
        }
        self.zlibs[stream as usize] = Some(reader.into_inner()?);
        recycle(d);
        Ok(())
    }

    async fn palette_filter<S, F, Fut>(
        &mut self,
        stream: u8,
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
        let num_colors = input.read_u8().await? as usize + 1;
        if num_colors < 2 {
            return Err(VncError::InvalidImageData);
        }
        let palette_size = num_colors * 3;

        self.palette = initialized_vec(palette_size);
        input.read_exact(&mut self.palette).await?;

        let bpp = if num_colors <= 2 { 1 } else { 8 };
        let row_size = (rect.width as usize * bpp).div_ceil(8);
        let uncompressed_size = rect.height as usize * row_size;

        if uncompressed_size == 0 {
            return Ok(());
        }

        let data = self
            .read_tight_data(stream, input, uncompressed_size)
            .await?;

        if num_colors == 2 {
            self.mono_rect(data, rect, format, output_func).await?
        } else {
            self.palette_rect(data, rect, format, output_func).await?
        }

        Ok(())
    }

    async fn mono_rect<F, Fut>(
        &mut self,
        data: Vec<u8>,
        rect: &Rect,
        format: &PixelFormat,
        output_func: &F,
    ) -> Result<(), VncError>
    where
        F: Fn(VncEvent) -> Fut,
        Fut: Future<Output = Result<(), VncError>>,
    {
        // Convert indexed (palette based) image data to RGB
        let total = rect.width as usize * rect.height as usize;
        let mut image = initialized_vec(total * 4);
        let mut offset = 8_usize;
        let mut index = -1_isize;
        let mut dp = 0;
        for i in 0..total {
            if offset == 0 || i % rect.width as usize == 0 {
                offset = 8;
                index += 1;
            }
            offset -= 1;
            let sp = ((data[index as usize] >> offset) & 0x01) as usize * 3;
            let color = self
                .palette
                .get(sp..sp + 3)
                .ok_or(VncError::InvalidImageData)?;
            let true_color = self.to_true_color(format, color);
            image[dp..dp + 4].copy_from_slice(&true_color);
            dp += 4;
        }
        output_func(VncEvent::RawImage(*rect, image)).await?;
        Ok(())
    }

    async fn palette_rect<F, Fut>(
        &mut self,
        data: Vec<u8>,
        rect: &Rect,
        format: &PixelFormat,
        output_func: &F,
    ) -> Result<(), VncError>
    where
        F: Fn(VncEvent) -> Fut,
        Fut: Future<Output = Result<(), VncError>>,
    {
        // Convert indexed (palette based) image data to RGB
        let total = rect.width as usize * rect.height as usize;
        let mut image = initialized_vec(total * 4);
        let mut i = 0;
        let mut dp = 0;
        while i < total {
            let sp = data[i] as usize * 3;
            let color = self
                .palette
                .get(sp..sp + 3)
                .ok_or(VncError::InvalidImageData)?;
            let true_color = self.to_true_color(format, color);
            image[dp..dp + 4].copy_from_slice(&true_color);
            dp += 4;
            i += 1;
        }
        output_func(VncEvent::RawImage(*rect, image)).await?;
        Ok(())
    }

    async fn gradient_filter<S, F, Fut>(
        &mut self,
        stream: u8,
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
        let uncompressed_size = rect.width as usize * rect.height as usize * 3;
        if uncompressed_size == 0 {
            return Ok(());
        };
        let data = self
            .read_tight_data(stream, input, uncompressed_size)
            .await?;
        let mut image = initialized_vec(rect.width as usize * rect.height as usize * 4);

        let row_len = rect.width as usize * 3 + 3;
        let mut row_0 = vec![0_u16; row_len];
        let mut row_1 = vec![0_u16; row_len];
        let max = [format.red_max, format.green_max, format.blue_max];
        let shift = [format.red_shift, format.green_shift, format.blue_shift];
        let mut sp = 0;
        let mut dp = 0;

        for y in 0..rect.height as usize {
            let (this_row, prev_row) = match y & 1 {
                0 => (&mut row_0, &mut row_1),
                1 => (&mut row_1, &mut row_0),
                _ => unreachable!(),
            };
            let mut x = 3;
            while x < row_len {
                let rgb = &data[sp..sp + 3];
                let mut color = 0;
                for index in 0..3 {
                    let d = prev_row[index + x] as i32 + this_row[index + x - 3] as i32
                        - prev_row[index + x - 3] as i32;
                    let converted = if d < 0 {
                        0
                    } else if d > max[index] as i32 {
                        max[index]
                    } else {
                        d as u16
                    };
                    this_row[index + x] = (converted + rgb[index] as u16) & max[index];
                    color |= (this_row[x + index] as u32 & max[index] as u32) << shift[index];
                }
                image[dp..dp + 4].copy_from_slice(&color.to_le_bytes());
                dp += 4;
                sp += 3;
                x += 3;
            }
        }

        output_func(VncEvent::RawImage(*rect, image)).await?;
        Ok(())
    }

    async fn read_tight_data<S>(
        &mut self,
        stream: u8,
        input: &mut S,
        uncompressed_size: usize,
    ) -> Result<Vec<u8>, VncError>
    where
        S: AsyncRead + Unpin,
    {
        let data;
        if uncompressed_size < 12 {
            data = read_announced(input, uncompressed_size).await?;
        } else {
            let d = self.read_data(input).await?;
            let mut reader = ZlibReader::new(
                self.zlibs[stream as usize]
                    .take()
                    .ok_or(VncError::InvalidImageData)?,
                &d,
            );
            data = inflate_announced(&mut reader, uncompressed_size)?;
            self.zlibs[stream as usize] = Some(reader.into_inner()?);
            recycle(d);
        };
        Ok(data)
    }

    fn to_true_color(&self, format: &PixelFormat, color: &[u8]) -> [u8; 4] {
        let alpha = 255;
        // always rgb
        (((color[0] as u32 & format.red_max as u32) << format.red_shift)
            | ((color[1] as u32 & format.green_max as u32) << format.green_shift)
            | ((color[2] as u32 & format.blue_max as u32) << format.blue_shift)
            | ((alpha as u32) << self.alpha_shift))
            .to_le_bytes()
    }
}
