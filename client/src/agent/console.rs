//! Status screens: what the PC shows while it is not showing a desktop. Text goes to the
//! kernel console (serial or screen) and to the foreground virtual terminal; where the kernel
//! offers a framebuffer (`/dev/fb0`), the same text is drawn there large, on a colour that
//! tells the state from across a room.
//!
//! The login form lives here too, behind the same lock as the screen: a key typed just as the
//! broker moves the PC on (to a desktop, say) can then never draw the form over what follows.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::agent::{Enrolment, LoginPrompt};

use super::login::form::{Field, Form, Submit, View};
use crate::viewer::input::Layout;

/// One status screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Screen {
    Booting { step: String },
    Waiting { detail: String },
    Error { reason: String, reboot_in: Option<Duration> },
    /// A message from the admin, shown until the next screen.
    Message { text: String },
    /// The login form (drawn from its [`View`], which holds nothing of the password).
    Login(View),
    /// This PC waits for an administrator, who sees the same code.
    Approval { pc: String, code: String },
    /// The login was accepted; the desktop is on its way.
    Starting { user: String },
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
            Screen::Login(_) => "Log in",
            Screen::Approval { .. } => "Waiting for approval",
            Screen::Starting { .. } => "Welcome",
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
            Screen::Login(v) => {
                let marker = |f: Field| if v.focus == f { ("> ", "_") } else { ("  ", "") };
                let (um, uc) = marker(Field::User);
                let (pm, pc) = marker(Field::Password);
                format!(
                    "This PC: {} ({})\n\n{um}User name: {}{uc}\n{pm}Password:  {pc}\n\n{}\n\nTab: next field   Enter: log in   Esc: clear",
                    v.pc,
                    enrolment_words(v.enrolment),
                    v.user,
                    v.message.as_deref().unwrap_or(""),
                )
            }
            Screen::Approval { pc, code } => format!(
                "{pc} is new here: an administrator must approve it before anyone can log in.\n\nCode: {code}\n\nThis screen moves on by itself once the PC is approved."
            ),
            Screen::Starting { user } => format!("Starting your desktop, {user}."),
            Screen::Desktop => String::new(),
        }
    }

    /// The lines drawn on the framebuffer: the title, a blank line, the body.
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.title().to_string(), String::new()];
        lines.extend(self.body().lines().map(str::to_string));
        lines
    }

    /// What goes to stderr and the log: the form's typing is left out (one line per key
    /// would flood a serial console), its message is not.
    fn log_line(&self) -> String {
        match self {
            Screen::Login(v) => format!(
                "{} ({}): {}",
                v.pc,
                enrolment_words(v.enrolment),
                v.message.as_deref().unwrap_or("waiting for a login")
            ),
            other => other.body().replace('\n', " "),
        }
    }

    /// Background colour (0xRRGGBB).
    fn colour(&self) -> u32 {
        match self {
            Screen::Booting { .. } => 0x1d3557,
            Screen::Waiting { .. } => 0x2a6f4e,
            Screen::Error { .. } => 0x8b1e1e,
            Screen::Message { .. } => 0x6a4c93,
            Screen::Login(_) => 0x264653,
            Screen::Approval { .. } => 0x8a5a00,
            Screen::Starting { .. } => 0x2a6f4e,
            Screen::Desktop => 0,
        }
    }
}


/// Where status screens go.
pub(crate) struct Console {
    tty: Option<File>,
    fb: Option<Framebuffer>,
    /// Where the framebuffer is looked for (sysfs, /dev) while there is none: the boot image's
    /// DRM driver is a module, loaded after the console opened, and its /dev/fb0 only appears
    /// then.
    fb_at: Option<(PathBuf, PathBuf)>,
    last: Option<Screen>,
    last_logged: Option<String>,
    layout: Layout,
    form: Option<Form>,
}

fn enrolment_words(e: Enrolment) -> &'static str {
    match e {
        Enrolment::Enrolled => "enrolled",
        Enrolment::Pending => "waiting for approval",
        Enrolment::Unknown => "enrolment unknown",
    }
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
        Console { fb_at: Some((sys.to_path_buf(), dev.to_path_buf())), ..Console::stderr_only() }.with_tty(tty)
    }

    fn with_tty(mut self, tty: Option<File>) -> Self {
        self.tty = tty;
        self
    }

    /// A console that only writes to stderr (tests, or running outside PID 1).
    pub(crate) fn stderr_only() -> Self {
        Console { tty: None, fb: None, fb_at: None, last: None, last_logged: None, layout: Layout::Us, form: None }
    }

    /// The keyboard layout the login form reads keys with.
    pub(crate) fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// Shows the login form for `prompt`: a new one, or the one up already with the prompt's
    /// message and name (the password typed so far is cleared).
    pub(crate) fn login(&mut self, prompt: &LoginPrompt) {
        match &mut self.form {
            Some(f) => f.prompt(prompt),
            None => self.form = Some(Form::new(self.layout, prompt)),
        }
        self.redraw_form();
    }

    /// Whether the login form is on screen.
    pub(crate) fn form_up(&self) -> bool {
        self.form.is_some()
    }

    /// A key for the login form, if it is up; returns the login it submits.
    pub(crate) fn login_key(&mut self, code: u16, down: bool) -> Option<Submit> {
        let submit = self.form.as_mut()?.key(code, down);
        self.redraw_form();
        submit
    }

    /// Sets the login form's message, if the form is up.
    pub(crate) fn login_message(&mut self, text: Option<String>) {
        if let Some(f) = &mut self.form {
            f.set_message(text);
            self.redraw_form();
        }
    }

    fn redraw_form(&mut self) {
        if let Some(view) = self.form.as_ref().map(Form::view) {
            self.draw(Screen::Login(view));
        }
    }

    /// Shows `screen` unless it is already showing; any other screen than the form takes the
    /// form (and whatever was typed into it) away.
    pub(crate) fn show(&mut self, screen: Screen) {
        if !matches!(screen, Screen::Login(_)) {
            self.form = None;
        }
        self.draw(screen);
    }

    fn draw(&mut self, screen: Screen) {
        if self.last.as_ref() == Some(&screen) {
            return;
        }
        if screen != Screen::Desktop {
            self.find_framebuffer();
            let body = screen.body();
            let logged = format!("{}: {}", screen.title(), screen.log_line());
            if self.last_logged.as_ref() != Some(&logged) {
                eprintln!("thinclient: == {} == {}", screen.title(), screen.log_line());
                self.last_logged = Some(logged);
            }
            if let Some(tty) = &mut self.tty {
                // Clear and home, then the text: the VT shows nothing else. Where the text
                // console lies on the framebuffer the drawing below covers it, so the VT is
                // only cleared and its cursor hidden (a blinking cursor would draw over it).
                let _ = write!(tty, "\x1b[2J\x1b[H");
                if self.fb.is_some() {
                    let _ = write!(tty, "\x1b[?25l");
                } else {
                    let _ = write!(tty, "\x1b[?25h\n  {}\n\n", screen.title());
                    for line in body.lines() {
                        let _ = writeln!(tty, "  {line}");
                    }
                }
            }
            if let Some(fb) = &mut self.fb {
                if let Err(e) = fb.draw(screen.colour(), &screen.lines()) {
                    log::warn!("drawing on the framebuffer: {e}");
                    self.fb = None;
                    self.fb_at = None;
                }
            }
        }
        self.last = Some(screen);
    }
}

impl Console {
    /// Opens the framebuffer once it exists; looked for until then.
    fn find_framebuffer(&mut self) {
        if self.fb.is_some() {
            return;
        }
        let Some((sys, dev)) = &self.fb_at else { return };
        let present = sys.join("class/graphics/fb0").exists();
        match Framebuffer::open(sys, dev) {
            Some(fb) => {
                log::info!("status screens drawn on {} ({}x{})", dev.join("fb0").display(), fb.width, fb.height);
                self.fb = Some(fb);
            }
            // There but not usable (its depth, say): text only from now on.
            None if present => self.fb_at = None,
            None => {}
        }
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

/// The 8x8 bitmap of `c`: ASCII and Latin-1 (user names with umlauts), else `?`.
fn glyph(c: char) -> [u8; 8] {
    use font8x8::UnicodeFonts;
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// `line` in rows of at most `cols` characters, broken between words where it can be (a word
/// longer than a row is cut); an empty line is one empty row.
fn wrap(line: &str, cols: usize) -> Vec<Vec<char>> {
    let mut rows: Vec<Vec<char>> = vec![vec![]];
    for (i, word) in line.split(' ').enumerate() {
        let word: Vec<char> = word.chars().collect();
        let row = rows.last_mut().expect("never empty");
        let gap = usize::from(i > 0);
        if row.len() + gap + word.len() <= cols {
            if i > 0 {
                row.push(' ');
            }
            row.extend(&word);
            continue;
        }
        if !row.is_empty() && row.iter().any(|c| *c != ' ') {
            rows.push(vec![]);
        }
        for piece in word.chunks(cols.max(1)) {
            let row = rows.last_mut().expect("never empty");
            if !row.is_empty() && row.len() + piece.len() > cols {
                rows.push(vec![]);
            }
            rows.last_mut().expect("never empty").extend(piece);
        }
    }
    rows
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
        for chunk in wrap(line, cols) {
            if y + cell > height {
                return frame;
            }
            for (i, c) in chunk.iter().enumerate() {
                let glyph = glyph(*c);
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

    fn frame(s: &Screen) -> Vec<u8> {
        render(640, 480, 640 * 4, 4, s.colour(), &s.lines())
    }

    fn prompt(message: Option<&str>) -> LoginPrompt {
        LoginPrompt { pc: "lab-07".into(), enrolment: Enrolment::Enrolled, message: message.map(Into::into), user: None, proxy: None }
    }

    /// Types `codes` (press and release) into the console's form.
    fn tap(c: &mut Console, codes: &[u16]) {
        for &k in codes {
            c.login_key(k, true);
            c.login_key(k, false);
        }
    }

    #[test]
    fn the_password_leaves_no_pixels_and_the_name_does() {
        let mut c = Console::stderr_only();
        c.login(&prompt(None));
        tap(&mut c, &[30, 38, 23]); // a l i
        tap(&mut c, &[15]); // Tab to the password
        let empty = c.last.clone().expect("drawn");
        assert!(matches!(&empty, Screen::Login(v) if v.user == "ali"));
        tap(&mut c, &[25, 30, 31, 31, 17, 24, 19, 32]); // p a s s w o r d
        let typed = c.last.clone().expect("drawn");
        assert_eq!(frame(&empty), frame(&typed), "typing a password changed the picture");
        for screen in [&empty, &typed] {
            for text in [screen.body(), screen.log_line()] {
                assert!(!text.contains("password") && !text.contains('*'), "{text:?}");
            }
        }
        // The name field does show what is typed: the comparison above can fail.
        tap(&mut c, &[15, 20]); // back to the name, t
        assert_ne!(frame(&typed), frame(c.last.as_ref().unwrap()));
    }

    #[test]
    fn form_messages_focus_and_leaving_it() {
        let mut c = Console::stderr_only();
        c.login(&prompt(Some("No capacity: 3 desktops run in 7.5 of 8 GiB; try again later.")));
        let Some(Screen::Login(v)) = &c.last else { panic!() };
        let before = frame(c.last.as_ref().unwrap());
        assert!(Screen::Login(v.clone()).body().contains("> User name: _"));
        assert!(Screen::Login(v.clone()).body().contains("7.5 of 8 GiB"));
        c.login_message(Some("The broker cannot be reached.".into()));
        let Some(Screen::Login(v)) = &c.last else { panic!() };
        assert_eq!(v.message.as_deref(), Some("The broker cannot be reached."));
        assert_ne!(before, frame(c.last.as_ref().unwrap()));
        tap(&mut c, &[15]);
        assert!(c.last.as_ref().unwrap().body().contains("> Password:  _"));
        // Another screen takes the form away; keys then do nothing.
        c.show(Screen::Starting { user: "alice".into() });
        assert!(!c.form_up());
        assert!(c.login_key(30, true).is_none());
        assert_eq!(c.last, Some(Screen::Starting { user: "alice".into() }));
        let approval = Screen::Approval { pc: "lab-07".into(), code: "K7Q-2MX".into() };
        assert!(approval.body().contains("Code: K7Q-2MX"));
        assert!(frame(&approval).chunks(4).any(|p| p == [0xff, 0xff, 0xff, 0xff]));
    }

    #[test]
    fn latin1_names_are_drawn() {
        let plain = render(200, 100, 800, 4, 0, &["o".into()]);
        let umlaut = render(200, 100, 800, 4, 0, &["ö".into()]);
        let question = render(200, 100, 800, 4, 0, &["?".into()]);
        assert_ne!(plain, umlaut);
        assert_ne!(umlaut, question);
    }

    #[test]
    fn lines_wrap_between_words() {
        let rows = |s: &str, n| wrap(s, n).into_iter().map(|r| r.into_iter().collect::<String>()).collect::<Vec<_>>();
        assert_eq!(rows("an administrator must approve it", 16), ["an administrator", "must approve it"]);
        assert_eq!(rows("  User name: alice", 40), ["  User name: alice"]);
        assert_eq!(rows("", 10), [""]);
        assert_eq!(rows("abcdefghij kl", 4), ["abcd", "efgh", "ij", "kl"]);
    }

    /// The framebuffer of a DRM driver loaded after the console opened is found and drawn on.
    #[test]
    fn a_framebuffer_that_appears_later_gets_the_screens() {
        let root = tempfile::tempdir().unwrap();
        let (sys, dev) = (root.path().join("sys"), root.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        let mut c = Console::open(&sys, &dev);
        c.show(Screen::Booting { step: "Loading drivers".into() });
        assert!(c.fb.is_none());
        let fb0 = sys.join("class/graphics/fb0");
        std::fs::create_dir_all(&fb0).unwrap();
        for (name, value) in [("virtual_size", "320,200\n"), ("bits_per_pixel", "32\n"), ("stride", "1280\n")] {
            std::fs::write(fb0.join(name), value).unwrap();
        }
        std::fs::write(dev.join("fb0"), vec![0u8; 1280 * 200]).unwrap();
        c.login(&prompt(None));
        let pixels = std::fs::read(dev.join("fb0")).unwrap();
        // The form's colour in the corner (BGRX in memory).
        assert_eq!(&pixels[..4], &[0x53, 0x46, 0x26, 0xff]);
    }

    #[test]
    fn error_screen_says_when_it_restarts() {
        let s = Screen::Error { reason: "no DHCP answer".into(), reboot_in: Some(Duration::from_secs(30)) };
        assert!(s.body().contains("Restarting in 30 seconds"));
    }
}
