//! The status line drawn over the desktop ("connecting", "connection lost, retrying in 4 s"),
//! rendered with an embedded 8x8 bitmap font so every presenter, fbdev included, can show it
//! without a font stack.

use font8x8::{UnicodeFonts, BASIC_FONTS};

const BAR_BG: [u8; 4] = [0x30, 0x20, 0x90, 0]; // BGRX: dark red, readable on any desktop
const TEXT_FG: [u8; 4] = [0xff, 0xff, 0xff, 0];
const PAD: u32 = 4;

/// A BGRX image of the status line, `width` pixels wide.
pub(crate) struct StatusBar {
    pub w: u32,
    pub h: u32,
    pub bgrx: Vec<u8>,
}

/// Text twice the font size on screens wide enough, so it can be read from a chair.
fn scale_for(width: u32) -> u32 {
    if width >= 800 {
        2
    } else {
        1
    }
}

pub(crate) fn render(text: &str, width: u32) -> StatusBar {
    let scale = scale_for(width);
    let h = 8 * scale + 2 * PAD;
    let w = width.max(1);
    let mut bgrx: Vec<u8> = BAR_BG.iter().copied().cycle().take((w * h * 4) as usize).collect();
    let mut pen_x = PAD;
    for ch in text.chars() {
        if pen_x + 8 * scale > w {
            break;
        }
        let glyph = BASIC_FONTS.get(ch).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8u32 {
                if bits & (1 << gx) == 0 {
                    continue;
                }
                for sy in 0..scale {
                    for sx in 0..scale {
                        let x = pen_x + gx * scale + sx;
                        let y = PAD + gy as u32 * scale + sy;
                        let o = ((y * w + x) * 4) as usize;
                        bgrx[o..o + 4].copy_from_slice(&TEXT_FG);
                    }
                }
            }
        }
        pen_x += 8 * scale;
    }
    StatusBar { w, h, bgrx }
}

impl StatusBar {
    /// Draws the bar over the top rows of a BGRX image of the given size.
    pub(crate) fn draw_over(&self, dst: &mut [u8], dst_w: u32, dst_h: u32) {
        let w = self.w.min(dst_w) as usize * 4;
        for y in 0..self.h.min(dst_h) as usize {
            let s = y * self.w as usize * 4;
            let d = y * dst_w as usize * 4;
            dst[d..d + w].copy_from_slice(&self.bgrx[s..s + w]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pixels_are_drawn_and_clipped() {
        let bar = render("Hi", 100);
        assert_eq!(bar.h, 16);
        let lit = bar.bgrx.chunks_exact(4).filter(|p| *p == TEXT_FG).count();
        assert!(lit > 10, "{lit}");
        // Longer than the bar: clipped, no panic.
        let bar = render(&"x".repeat(500), 30);
        assert_eq!(bar.bgrx.len(), (30 * bar.h * 4) as usize);
        let mut dst = vec![0u8; 10 * 5 * 4];
        bar.draw_over(&mut dst, 10, 5);
        assert_eq!(&dst[..4], &BAR_BG);
    }
}
