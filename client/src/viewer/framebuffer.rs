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

    pub(crate) fn intersects(&self, o: &Rect) -> bool {
        self.x < o.right() && o.x < self.right() && self.y < o.bottom() && o.y < self.bottom()
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

/// The display's own pixel memory, lent to the framebuffer (see [`Framebuffer::offer`]).
#[derive(Debug)]
struct Lent {
    ptr: *mut u8,
    len: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Framebuffer {
    width: u32,
    height: u32,
    /// The pixels while nothing is lent; empty otherwise.
    pixels: Vec<u8>,
    lent: Option<Lent>,
    /// Display memory to live in at that size (see [`Framebuffer::offer`]).
    offer: Option<(Lent, u32, u32)>,
    damage: Vec<Rect>,
}

// SAFETY: the lent memory is only touched through `&mut Framebuffer` or `&Framebuffer`, which
// the screen mutex hands out to one thread at a time, and whoever lent it promises (see
// `offer`) that it stays valid until `withdraw`.
unsafe impl Send for Framebuffer {}

impl Framebuffer {
    pub(crate) fn width(&self) -> u32 {
        self.width
    }

    pub(crate) fn height(&self) -> u32 {
        self.height
    }

    pub(crate) fn pixels(&self) -> &[u8] {
        match &self.lent {
            // SAFETY: valid for `len` bytes while lent (the contract of `offer`).
            Some(l) => unsafe { std::slice::from_raw_parts(l.ptr, l.len) },
            None => &self.pixels,
        }
    }

    /// Also for presenters whose blit functions want a mutable surface (they only read).
    pub(crate) fn pixels_mut(&mut self) -> &mut [u8] {
        match &mut self.lent {
            // SAFETY: as in `pixels`; `&mut self` makes this the only access.
            Some(l) => unsafe { std::slice::from_raw_parts_mut(l.ptr, l.len) },
            None => &mut self.pixels,
        }
    }

    /// Offers the display's memory (`w`x`h`, rows of `w * BPP` bytes) to live in whenever the
    /// desktop has that size, now or after a resize: decoded rectangles then land where the
    /// display reads them and the desktop is held once instead of twice, and never in a buffer
    /// of its own first.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes and used by nothing else while
    /// the screen is unlocked, until [`Framebuffer::withdraw`].
    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) unsafe fn offer(&mut self, ptr: *mut u8, len: usize, w: u32, h: u32) {
        if len != w as usize * h as usize * BPP {
            return;
        }
        self.withdraw();
        self.offer = Some((Lent { ptr, len }, w, h));
        if (self.width, self.height) == (w, h) && w > 0 {
            // SAFETY: `ptr` is valid for `len` bytes (the caller's promise) and not our Vec.
            unsafe { std::ptr::copy_nonoverlapping(self.pixels.as_ptr(), ptr, len.min(self.pixels.len())) };
            self.pixels = Vec::new();
            self.lent = Some(Lent { ptr, len });
        }
    }

    /// Takes the pixels back out of the display's memory and withdraws the offer (before that
    /// memory goes away).
    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) fn withdraw(&mut self) {
        if self.lent.is_some() {
            self.pixels = self.pixels().to_vec();
            self.lent = None;
        }
        self.offer = None;
    }

    /// Lent memory that went away without [`Framebuffer::withdraw`]: its contents are lost, so
    /// the framebuffer starts black (and all damaged) in memory of its own.
    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) fn forget_lent(&mut self) {
        if self.lent.take().is_some() {
            self.offer = None;
            self.pixels = vec![0; self.stride() * self.height as usize];
            self.damage_all();
        }
    }

    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) fn offered(&self) -> Option<*mut u8> {
        self.offer.as_ref().map(|(l, _, _)| l.ptr)
    }

    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub(crate) fn lent_ptr(&self) -> Option<*mut u8> {
        self.lent.as_ref().map(|l| l.ptr)
    }

    pub(crate) fn stride(&self) -> usize {
        self.width as usize * BPP
    }

    /// A new desktop size: contents are undefined until the server repaints, so black.
    pub(crate) fn resize(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        self.lent = None;
        self.pixels = Vec::new();
        let len = width as usize * height as usize * BPP;
        match &self.offer {
            Some((l, w, h)) if (*w, *h) == (width, height) && len > 0 => {
                // SAFETY: valid for `len` bytes until withdrawn (the contract of `offer`).
                unsafe { std::ptr::write_bytes(l.ptr, 0, l.len) };
                self.lent = Some(Lent { ptr: l.ptr, len: l.len });
            }
            // A fresh zeroed allocation: its pages stay untouched (not resident) until painted.
            _ => self.pixels = vec![0; len],
        }
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
        let px = self.pixels_mut();
        for (i, src) in data.chunks_exact(row).take(r.h as usize).enumerate() {
            let off = (r.y as usize + i) * stride + r.x as usize * BPP;
            px[off..off + row].copy_from_slice(src);
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
        let px = self.pixels_mut();
        for i in rows {
            let s = (src_y + i) as usize * stride + src_x as usize * BPP;
            let d = (dst.y + i) as usize * stride + dst.x as usize * BPP;
            px.copy_within(s..s + row, d);
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
        fb.put_bgrx(Rect::new(3, 0, 1, 1), &[1, 2, 3, 4]).unwrap();
        assert_eq!(px(&fb, 3, 0), [1, 2, 3, 4]);
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
    fn offered_memory_is_the_framebuffer_until_withdrawn() {
        let mut fb = Framebuffer::default();
        fb.resize(2, 2);
        fb.put_bgrx(Rect::new(0, 0, 1, 1), &[1, 2, 3, 0]).unwrap();
        let mut display = vec![9u8; 16];
        // SAFETY: `display` outlives the offer, which ends with `withdraw` below.
        unsafe { fb.offer(display.as_mut_ptr(), display.len(), 2, 2) };
        fb.put_bgrx(Rect::new(1, 1, 1, 1), &[4, 5, 6, 0]).unwrap();
        // Another size lives in memory of its own, the offered size in the display's again.
        fb.resize(1, 1);
        assert!(fb.lent_ptr().is_none());
        fb.resize(2, 2);
        assert_eq!(fb.lent_ptr(), Some(display.as_mut_ptr()));
        assert_eq!(&display[..], &[0; 16]);
        fb.put_bgrx(Rect::new(0, 0, 1, 1), &[1, 2, 3, 0]).unwrap();
        fb.put_bgrx(Rect::new(1, 1, 1, 1), &[4, 5, 6, 0]).unwrap();
        fb.withdraw();
        assert_eq!(&display[..4], &[1, 2, 3, 0]);
        assert_eq!(&display[4..8], &[0; 4]);
        assert_eq!(&display[12..], &[4, 5, 6, 0]);
        display.fill(7);
        assert_eq!(px(&fb, 1, 1), [4, 5, 6, 0]);
        assert_eq!(px(&fb, 0, 0), [1, 2, 3, 0]);
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
