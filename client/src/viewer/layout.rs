//! Where the desktop goes on the screen: scaled to fit with its aspect ratio kept, centred,
//! and the inverse mapping for the pointer.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fit {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    src_w: u32,
    src_h: u32,
}

impl Fit {
    /// `scale` false shows the desktop 1:1 (cropped or with borders) instead of scaling.
    pub(crate) fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32, scale: bool) -> Fit {
        let (src_w, src_h) = (src_w.max(1), src_h.max(1));
        let (w, h) = if !scale {
            (src_w.min(dst_w), src_h.min(dst_h))
        } else if u64::from(dst_w) * u64::from(src_h) <= u64::from(dst_h) * u64::from(src_w) {
            // Width-bound: full width, height by the ratio.
            (dst_w, (u64::from(dst_w) * u64::from(src_h) / u64::from(src_w)) as u32)
        } else {
            ((u64::from(dst_h) * u64::from(src_w) / u64::from(src_h)) as u32, dst_h)
        };
        let (w, h) = (w.max(1), h.max(1));
        Fit { x: (dst_w.saturating_sub(w)) / 2, y: (dst_h.saturating_sub(h)) / 2, w, h, src_w, src_h }
    }

    pub(crate) fn is_unscaled(&self) -> bool {
        self.w == self.src_w && self.h == self.src_h
    }

    /// Screen position to desktop position, clamped to the desktop.
    pub(crate) fn to_desktop(&self, sx: i32, sy: i32) -> (u16, u16) {
        let rel = |s: i32, o: u32, len: u32, src: u32| -> u16 {
            let v = (i64::from(s) - i64::from(o)).clamp(0, i64::from(len) - 1);
            let d = v * i64::from(src) / i64::from(len);
            d.clamp(0, i64::from(src) - 1).min(i64::from(u16::MAX)) as u16
        };
        (rel(sx, self.x, self.w, self.src_w), rel(sy, self.y, self.h, self.src_h))
    }

    /// Screen span covered by desktop span `[s, s+len)` along one axis.
    pub(crate) fn span_x(&self, s: u32, len: u32) -> (u32, u32) {
        span(s, len, self.src_w, self.w, self.x)
    }

    pub(crate) fn span_y(&self, s: u32, len: u32) -> (u32, u32) {
        span(s, len, self.src_h, self.h, self.y)
    }

    /// For every screen column of the fit, the desktop column it samples (nearest).
    pub(crate) fn sample_map(len: u32, src: u32) -> Vec<u32> {
        (0..len).map(|i| ((u64::from(i) * u64::from(src) + u64::from(src) / 2) / u64::from(len.max(1))) as u32)
            .map(|v| v.min(src.saturating_sub(1)))
            .collect()
    }
}

fn span(s: u32, len: u32, src: u32, dst: u32, off: u32) -> (u32, u32) {
    // One pixel of slack each side: nearest sampling may pick a changed source pixel for a
    // screen pixel just outside the exact image of the span.
    let a = (u64::from(s) * u64::from(dst) / u64::from(src)) as u32;
    let b = (u64::from(s + len) * u64::from(dst)).div_ceil(u64::from(src)) as u32;
    (off + a.saturating_sub(1), off + (b + 1).min(dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_aspect_and_centres() {
        let f = Fit::new(1024, 768, 1920, 1080, true);
        assert_eq!((f.x, f.y, f.w, f.h), (240, 0, 1440, 1080));
        let f = Fit::new(1920, 1080, 1280, 1024, true);
        assert_eq!((f.x, f.y, f.w, f.h), (0, 152, 1280, 720));
        let f = Fit::new(800, 600, 800, 600, true);
        assert!(f.is_unscaled());
        let f = Fit::new(800, 600, 1920, 1080, false);
        assert_eq!((f.x, f.y, f.w, f.h), (560, 240, 800, 600));
    }

    #[test]
    fn pointer_maps_back_and_clamps() {
        let f = Fit::new(1024, 768, 1920, 1080, true);
        assert_eq!(f.to_desktop(240, 0), (0, 0));
        assert_eq!(f.to_desktop(240 + 1439, 1079), (1023, 767));
        assert_eq!(f.to_desktop(0, 5000), (0, 767));
        assert_eq!(f.to_desktop(960, 540), (512, 384));
    }

    #[test]
    fn sample_map_stays_in_range() {
        let m = Fit::sample_map(1440, 1024);
        assert_eq!(m.len(), 1440);
        assert!(m.iter().all(|&v| v < 1024));
        assert_eq!(Fit::sample_map(4, 4), vec![0, 1, 2, 3]);
    }
}
