//! Status screens: what the PC shows while it is not showing a desktop. Text goes to the
//! kernel console (serial or screen) and to the foreground virtual terminal; where the kernel
//! offers a framebuffer (`/dev/fb0`), the same text is drawn there large, on a colour that
//! tells the state from across a room.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// One status screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Screen {
    Booting { step: String },
    Waiting { detail: String },
    Error { reason: String, reboot_in: Option<Duration> },
    /// A message from the admin, shown until the next screen.
    Message { text: String },
    /// The viewer owns the screen: draw nothing.
    Desktop,
}

impl Screen {
    fn title(&self) -> &'static str {
        match self {
            Screen::Booting { .. } => "Starting up",
            Screen::Waiting { .. } => "Waiting for a desktop",
            Screen::Error { .. } => "This PC cannot start",
            Screen::Message { .. } => "Message from the administrator",
            Screen::Desktop => "Desktop",
        }
    }

    fn body(&self) -> String {
        match self {
            Screen::Booting { step } => step.clone(),
            Screen::Waiting { detail } => detail.clone(),
            Screen::Error { reason, reboot_in: Some(d) } => {
                format!("{reason}\n\nRestarting in {} seconds.", d.as_secs())
            }
            Screen::Error { reason, reboot_in: None } => reason.clone(),
            Screen::Message { text } => text.clone(),
            Screen::Desktop => String::new(),
        }
    }

    /// Background colour (0xRRGGBB).
    fn colour(&self) -> u32 {
        match self {
            Screen::Booting { .. } => 0x1d3557,
            Screen::Waiting { .. } => 0x2a6f4e,
            Screen::Error { .. } => 0x8b1e1e,
            Screen::Message { .. } => 0x6a4c93,
            Screen::Desktop => 0,
        }
    }
}

/// Where status screens go.
pub(crate) struct Console {
    tty: Option<File>,
    fb: Option<Framebuffer>,
    last: Option<Screen>,
}

impl Console {
    /// Opens the foreground VT (unless it already is the kernel console, which gets every line
    /// through stderr) and the framebuffer, when present.
    pub(crate) fn open(sys: &Path, dev: &Path) -> Self {
        let active = std::fs::read_to_string(sys.join("class/tty/console/active")).unwrap_or_default();
        let tty = if active.split_whitespace().any(|c| c == "tty0" || c.starts_with("tty") && c[3..].parse::<u32>().is_ok()) {
            None
        } else {
            OpenOptions::new().write(true).open(dev.join("tty0")).ok()
        };
        Console { tty, fb: Framebuffer::open(sys, dev), last: None }
    }

    /// A console that only writes to stderr (tests, or running outside PID 1).
    pub(crate) fn stderr_only() -> Self {
        Console { tty: None, fb: None, last: None }
    }

    /// Shows `screen` unless it is already showing.
    pub(crate) fn show(&mut self, screen: Screen) {
        if self.last.as_ref() == Some(&screen) {
            return;
        }
        if screen != Screen::Desktop {
            let body = screen.body();
            eprintln!("thinclient: == {} == {}", screen.title(), body.replace('\n', " "));
            if let Some(tty) = &mut self.tty {
                // Clear and home, then the text: the VT shows nothing else.
                let _ = write!(tty, "\x1b[2J\x1b[H\n  {}\n\n", screen.title());
                for line in body.lines() {
                    let _ = writeln!(tty, "  {line}");
                }
            }
            if let Some(fb) = &mut self.fb {
                let mut lines = vec![screen.title().to_string(), String::new()];
                lines.extend(body.lines().map(str::to_string));
                if let Err(e) = fb.draw(screen.colour(), &lines) {
                    log::warn!("drawing on the framebuffer: {e}");
                    self.fb = None;
                }
            }
        }
        self.last = Some(screen);
    }
}

/// `/dev/fb0` as the kernel describes it in sysfs.
struct Framebuffer {
    file: File,
    width: usize,
    height: usize,
    stride: usize,
    bytes_pp: usize,
}

impl Framebuffer {
    fn open(sys: &Path, dev: &Path) -> Option<Self> {
        let dir = sys.join("class/graphics/fb0");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let size = read("virtual_size")?;
        let (w, h) = size.trim().split_once(',')?;
        let bpp: usize = read("bits_per_pixel")?.trim().parse().ok()?;
        let stride: usize = read("stride")?.trim().parse().ok()?;
        if bpp != 32 && bpp != 16 {
            log::info!("framebuffer has {bpp} bits per pixel; status screens stay text-only");
            return None;
        }
        let file = OpenOptions::new().read(true).write(true).open(dev.join("fb0")).ok()?;
        Some(Framebuffer {
            file,
            width: w.parse().ok()?,
            height: h.parse().ok()?,
            stride,
            bytes_pp: bpp / 8,
        })
    }

    fn draw(&mut self, bg: u32, lines: &[String]) -> std::io::Result<()> {
        let frame = render(self.width, self.height, self.stride, self.bytes_pp, bg, lines);
        self.file.write_all_at(&frame, 0)
    }
}

fn pixel(bytes_pp: usize, rgb: u32) -> [u8; 4] {
    if bytes_pp == 2 {
        let (r, g, b) = ((rgb >> 16) & 0xff, (rgb >> 8) & 0xff, rgb & 0xff);
        let v = ((r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)) as u16;
        let [lo, hi] = v.to_le_bytes();
        [lo, hi, 0, 0]
    } else {
        (rgb | 0xff00_0000).to_le_bytes()
    }
}

/// Draws `lines` in white on `bg` with an 8x8 font scaled up, wrapped to the screen width.
pub(crate) fn render(width: usize, height: usize, stride: usize, bytes_pp: usize, bg: u32, lines: &[String]) -> Vec<u8> {
    let mut frame = vec![0u8; stride * height];
    let bgp = pixel(bytes_pp, bg);
    let fgp = pixel(bytes_pp, 0xffffff);
    for row in frame.chunks_mut(stride) {
        for px in row[..(width * bytes_pp).min(stride)].chunks_mut(bytes_pp) {
            px.copy_from_slice(&bgp[..bytes_pp]);
        }
    }
    let scale = if width >= 1024 { 3 } else { 2 };
    let cell = 8 * scale;
    let margin = cell * 2;
    let cols = (width.saturating_sub(2 * margin) / cell).max(1);
    let mut y = margin;
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        let chunks: Vec<&[char]> = if chars.is_empty() { vec![&[][..]] } else { chars.chunks(cols).collect() };
        for chunk in chunks {
            if y + cell > height {
                return frame;
            }
            for (i, c) in chunk.iter().enumerate() {
                let glyph = font8x8::legacy::BASIC_LEGACY.get(*c as usize).copied().unwrap_or([0; 8]);
                let x0 = margin + i * cell;
                for (gy, bits) in glyph.iter().enumerate() {
                    for gx in 0..8 {
                        if bits & (1 << gx) == 0 {
                            continue;
                        }
                        for sy in 0..scale {
                            let off = (y + gy * scale + sy) * stride + (x0 + gx * scale) * bytes_pp;
                            for sx in 0..scale {
                                let o = off + sx * bytes_pp;
                                frame[o..o + bytes_pp].copy_from_slice(&fgp[..bytes_pp]);
                            }
                        }
                    }
                }
            }
            y += cell + scale * 2;
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_background_and_text() {
        let frame = render(320, 200, 320 * 4, 4, 0x102030, &["Hi".to_string()]);
        assert_eq!(frame.len(), 320 * 200 * 4);
        // A corner pixel is the background (BGRX in memory).
        assert_eq!(&frame[..4], &[0x30, 0x20, 0x10, 0xff]);
        let white = frame.chunks(4).filter(|p| *p == [0xff, 0xff, 0xff, 0xff]).count();
        assert!(white > 20, "text pixels drawn: {white}");
    }

    #[test]
    fn long_text_wraps_and_stops_at_the_bottom() {
        let long = "x".repeat(10_000);
        let frame = render(64, 48, 64 * 2, 2, 0, &[long]);
        assert_eq!(frame.len(), 64 * 48 * 2);
    }

    #[test]
    fn error_screen_says_when_it_restarts() {
        let s = Screen::Error { reason: "no DHCP answer".into(), reboot_in: Some(Duration::from_secs(30)) };
        assert!(s.body().contains("Restarting in 30 seconds"));
    }
}
