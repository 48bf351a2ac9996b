//! The viewer's copy of the remote desktop and the regions that changed since the presenter last
//! looked. Pure: no I/O, driven by the session with decoded rectangles.

use anyhow::bail;

/// Bytes per pixel in [`Framebuffer::pixels`]: B, G, R, X in memory, which is what vnc-rs
/// delivers for `PixelFormat::bgra()`, SDL's `RGB888` texture and most 32 bpp framebuffers
/// take, so presenting is a copy.
pub(crate) const BPP: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub(crate) fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    fn right(&self) -> u32 {
        self.x + self.w
    }

    fn bottom(&self) -> u32 {
        self.y + self.h
    }

    pub(crate) fn union(&self, o: &Rect) -> Rect {
        let x = self.x.min(o.x);
        let y = self.y.min(o.y);
        Rect::new(x, y, self.right().max(o.right()) - x, self.bottom().max(o.bottom()) - y)
    }

    fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }
}

/// Above this many separate dirty rectangles they are merged into their bounding box: one
/// large upload is cheaper than many tiny ones.
const MAX_DAMAGE: usize = 32;

/// A cursor image sent by the server (CursorPseudo), BGRA with the alpha taken from its mask.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cursor {
    pub hot_x: u32,
    pub hot_y: u32,
    pub w: u32,
    pub h: u32,
    pub bgra: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct Framebuffer {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    damage: Vec<Rect>,
}

impl Framebuffer {
    pub(crate) fn width(&self) -> u32 {
        self.width
    }

    pub(crate) fn height(&self) -> u32 {
        self.height
    }

    pub(crate) fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// For presenters whose blit functions want a mutable surface (they only read from it).
    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) fn pixels_mut(&mut self) -> &mut [u8] {
        &mut self.pixels
    }

    pub(crate) fn stride(&self) -> usize {
        self.width as usize * BPP
    }

    /// A new desktop size: contents are undefined until the server repaints, so black.
    pub(crate) fn resize(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        self.pixels.clear();
        self.pixels.resize(width as usize * height as usize * BPP, 0);
        self.damage.clear();
        self.damage.push(Rect::new(0, 0, width, height));
    }

    fn check(&self, r: &Rect) -> anyhow::Result<()> {
        if r.right() > self.width || r.bottom() > self.height {
            bail!(
                "rectangle {}x{}+{}+{} outside the {}x{} desktop",
                r.w,
                r.h,
                r.x,
                r.y,
                self.width,
                self.height
            );
        }
        Ok(())
    }

    pub(crate) fn add_damage(&mut self, r: Rect) {
        if r.is_empty() {
            return;
        }
        if let Some(last) = self.damage.last_mut() {
            // Decoders send neighbouring tiles in order: absorb a rectangle that grows the last
            // one by little, which keeps the list short without losing locality.
            let u = last.union(&r);
            if u.area() <= last.area() + r.area() + r.area() / 4 {
                *last = u;
                return;
            }
        }
        self.damage.push(r);
        if self.damage.len() > MAX_DAMAGE {
            let all = self.damage.iter().skip(1).fold(self.damage[0], |a, b| a.union(b));
            self.damage.clear();
            self.damage.push(all);
        }
    }

    /// Everything changed since the last call.
    pub(crate) fn take_damage(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.damage)
    }

    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) fn damage_all(&mut self) {
        self.damage.clear();
        self.add_damage(Rect::new(0, 0, self.width, self.height));
    }

    /// Pixels in the desktop's own format (BGRX, one row after the other).
    pub(crate) fn put_bgrx(&mut self, r: Rect, data: &[u8]) -> anyhow::Result<()> {
        self.check(&r)?;
        let row = r.w as usize * BPP;
        if data.len() < row * r.h as usize {
            bail!("rectangle {}x{} came with {} bytes", r.w, r.h, data.len());
        }
        let stride = self.stride();
        for (i, src) in data.chunks_exact(row).take(r.h as usize).enumerate() {
            let off = (r.y as usize + i) * stride + r.x as usize * BPP;
            self.pixels[off..off + row].copy_from_slice(src);
        }
        self.add_damage(r);
        Ok(())
    }

    /// CopyRect: source and destination may overlap, so rows are walked away from the overlap.
    pub(crate) fn copy_rect(&mut self, dst: Rect, src_x: u32, src_y: u32) -> anyhow::Result<()> {
        self.check(&dst)?;
        self.check(&Rect::new(src_x, src_y, dst.w, dst.h))?;
        let stride = self.stride();
        let row = dst.w as usize * BPP;
        let rows: Box<dyn Iterator<Item = u32>> =
            if src_y < dst.y { Box::new((0..dst.h).rev()) } else { Box::new(0..dst.h) };
        for i in rows {
            let s = (src_y + i) as usize * stride + src_x as usize * BPP;
            let d = (dst.y + i) as usize * stride + dst.x as usize * BPP;
            self.pixels.copy_within(s..s + row, d);
        }
        self.add_damage(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn px(fb: &Framebuffer, x: u32, y: u32) -> [u8; 4] {
        let o = y as usize * fb.stride() + x as usize * BPP;
        fb.pixels()[o..o + 4].try_into().unwrap()
    }

    #[test]
    fn put_and_copy_with_overlap() {
        let mut fb = Framebuffer::default();
        fb.resize(4, 4);
        fb.take_damage();
        let data: Vec<u8> = (0..16u8).flat_map(|i| [i, i, i, 0]).collect();
        fb.put_bgrx(Rect::new(0, 0, 4, 4), &data).unwrap();
        // Shift everything down by one row: overlapping source and destination.
        fb.copy_rect(Rect::new(0, 1, 4, 3), 0, 0).unwrap();
        assert_eq!(px(&fb, 0, 1), [0, 0, 0, 0]);
        assert_eq!(px(&fb, 1, 3), [9, 9, 9, 0]);
        assert_eq!(fb.take_damage(), vec![Rect::new(0, 0, 4, 4)]);
        assert!(fb.take_damage().is_empty());
    }

    #[test]
    fn rejects_rectangles_outside_and_short_data() {
        let mut fb = Framebuffer::default();
        fb.resize(4, 4);
        assert!(fb.put_bgrx(Rect::new(3, 3, 2, 1), &[0; 8]).is_err());
        assert!(fb.put_bgrx(Rect::new(0, 0, 2, 2), &[0; 8]).is_err());
        assert!(fb.copy_rect(Rect::new(0, 0, 2, 2), 3, 3).is_err());
    }

    #[test]
    fn damage_is_bounded() {
        let mut fb = Framebuffer::default();
        fb.resize(1000, 1000);
        fb.take_damage();
        for i in 0..100 {
            fb.add_damage(Rect::new(i * 9 % 1000, i * 97 % 990, 1, 1));
        }
        let d = fb.take_damage();
        assert!(d.len() <= MAX_DAMAGE, "{}", d.len());
    }
}
