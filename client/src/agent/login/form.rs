//! The login form as pure state: two fields, the focus and a message, fed physical key events
//! through the viewer's layout table. No I/O: the caller reads the keyboard and draws
//! [`Form::view`], which never holds anything of the password.
//!
//! The password lives in one buffer allocated once at its largest size, so that typing never
//! moves it (a reallocation would leave the old copy behind in freed memory); it is
//! overwritten when it is cleared, when a character is erased, and when the form goes away.
//! A submitted password leaves the form in [`proto::agent::Password`], which overwrites it
//! once sent.

use proto::agent::{Enrolment, LoginPrompt, Password, MAX_LOGIN_NAME, MAX_PASSWORD};
use zeroize::Zeroize;

use crate::viewer::input::{InputEvent, Keyboard, Layout};

/// Which field the keys go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    User,
    Password,
}

/// What the screen shows of the form: nothing of the password, not even its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub pc: String,
    pub enrolment: Enrolment,
    pub user: String,
    pub focus: Field,
    pub message: Option<String>,
}

/// The person pressed Enter in the password field with both fields filled.
#[derive(Debug)]
pub(crate) struct Submit {
    pub user: String,
    pub password: Password,
}

const KS_BACKSPACE: u32 = 0xff08;
const KS_TAB: u32 = 0xff09;
const KS_RETURN: u32 = 0xff0d;
const KS_KP_ENTER: u32 = 0xff8d;
const KS_ESCAPE: u32 = 0xff1b;
const KS_ISO_LEFT_TAB: u32 = 0xfe20;

pub(crate) struct Form {
    keyboard: Keyboard,
    pc: String,
    enrolment: Enrolment,
    user: String,
    /// UTF-8, never grown past its first allocation (see the module comment).
    password: Vec<u8>,
    focus: Field,
    message: Option<String>,
    /// Submitted and not yet answered: Enter does nothing until the broker's answer (a new
    /// prompt) or a message.
    submitted: bool,
}

/// Room for the longest password plus one more character, so the bound is checked before
/// anything is written past it.
const PASSWORD_CAPACITY: usize = MAX_PASSWORD + 4;

impl Form {
    pub(crate) fn new(layout: Layout, prompt: &LoginPrompt) -> Form {
        let mut f = Form {
            keyboard: Keyboard::new(layout),
            pc: String::new(),
            enrolment: Enrolment::Unknown,
            user: String::new(),
            password: Vec::with_capacity(PASSWORD_CAPACITY),
            focus: Field::User,
            message: None,
            submitted: false,
        };
        f.prompt(prompt);
        f
    }

    /// The broker showed the form (again): after a failed login the name is given back and
    /// the password is to be typed anew.
    pub(crate) fn prompt(&mut self, p: &LoginPrompt) {
        self.pc = p.pc.clone();
        self.enrolment = p.enrolment;
        self.clear_password();
        self.message = p.message.clone();
        self.submitted = false;
        match p.user.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => {
                self.user = truncate(u, MAX_LOGIN_NAME);
                self.focus = Field::Password;
            }
            None => {
                self.user.clear();
                self.focus = Field::User;
            }
        }
    }

    /// Shows `text` (a lost broker, say); Enter submits again afterwards.
    pub(crate) fn set_message(&mut self, text: Option<String>) {
        self.message = text;
        self.submitted = false;
    }

    pub(crate) fn view(&self) -> View {
        View {
            pc: self.pc.clone(),
            enrolment: self.enrolment,
            user: self.user.clone(),
            focus: self.focus,
            message: self.message.clone(),
        }
    }

    /// A physical key went down (`down`) or up; returns the login when this key submits it.
    pub(crate) fn key(&mut self, code: u16, down: bool) -> Option<Submit> {
        let ctrl = self.keyboard.ctrl_held();
        let Some(InputEvent::Key { keysym, down: true }) = self.keyboard.key(code, down) else {
            return None;
        };
        match keysym {
            KS_TAB | KS_ISO_LEFT_TAB => self.toggle_focus(),
            KS_RETURN | KS_KP_ENTER => return self.enter(),
            KS_ESCAPE => {
                self.user.clear();
                self.clear_password();
                self.message = None;
                self.focus = Field::User;
                self.submitted = false;
            }
            KS_BACKSPACE => match self.focus {
                Field::User => {
                    self.user.pop();
                }
                Field::Password => self.erase_last(),
            },
            _ if ctrl => {}
            ks => {
                if let Some(c) = keysym_char(ks) {
                    self.type_char(c);
                }
            }
        }
        None
    }

    fn toggle_focus(&mut self) {
        self.focus = match self.focus {
            Field::User => Field::Password,
            Field::Password => Field::User,
        };
    }

    fn enter(&mut self) -> Option<Submit> {
        if self.focus == Field::User {
            self.focus = Field::Password;
            return None;
        }
        if self.submitted {
            return None;
        }
        if self.user.trim().is_empty() {
            self.message = Some("Type your user name first.".into());
            self.focus = Field::User;
            return None;
        }
        if self.password.is_empty() {
            self.message = Some("Type your password.".into());
            return None;
        }
        // Moved, not copied: the form keeps a fresh buffer of the same size.
        let bytes = std::mem::replace(&mut self.password, Vec::with_capacity(PASSWORD_CAPACITY));
        let password = match String::from_utf8(bytes) {
            Ok(s) => Password::new(s),
            // Only whole characters are ever pushed; should that fail, nothing is sent.
            Err(e) => {
                e.into_bytes().zeroize();
                return None;
            }
        };
        self.submitted = true;
        self.message = Some("Checking...".into());
        Some(Submit { user: self.user.trim().to_string(), password })
    }

    fn type_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        match self.focus {
            Field::User if self.user.len() + bytes.len() <= MAX_LOGIN_NAME => self.user.push(c),
            Field::Password if self.password.len() + bytes.len() <= MAX_PASSWORD => {
                self.password.extend_from_slice(bytes)
            }
            _ => {}
        }
        buf.zeroize();
    }

    /// Removes the last character of the password and overwrites its bytes.
    fn erase_last(&mut self) {
        let Ok(s) = std::str::from_utf8(&self.password) else {
            return self.clear_password();
        };
        let start = s.char_indices().next_back().map_or(0, |(i, _)| i);
        self.password[start..].zeroize();
        self.password.truncate(start);
    }

    fn clear_password(&mut self) {
        // Vec's zeroize overwrites its whole capacity, then empties it.
        self.password.zeroize();
    }
}

impl Drop for Form {
    fn drop(&mut self) {
        self.clear_password();
    }
}

/// The character a keysym types, if it is a printable one.
fn keysym_char(ks: u32) -> Option<char> {
    match ks {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(ks),
        0x20ac => Some('€'),
        // Keypad digits, whatever Num Lock says: a password typed on the keypad is digits.
        0xffb0..=0xffb9 => char::from_digit(ks - 0xffb0, 10),
        0x0100_0000..=0x0110_ffff => char::from_u32(ks - 0x0100_0000).filter(|c| !c.is_control()),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIFT: u16 = 42;
    const ENTER: u16 = 28;
    const TAB: u16 = 15;
    const BACKSPACE: u16 = 14;
    const ESC: u16 = 1;

    fn prompt(user: Option<&str>, message: Option<&str>) -> LoginPrompt {
        LoginPrompt {
            pc: "lab-07".into(),
            enrolment: Enrolment::Enrolled,
            message: message.map(str::to_string),
            user: user.map(str::to_string),
            proxy: None,
        }
    }

    /// Presses and releases each key; returns what the last one submitted, if anything.
    fn tap(f: &mut Form, codes: &[u16]) -> Option<Submit> {
        let mut out = None;
        for &c in codes {
            out = f.key(c, true);
            assert!(f.key(c, false).is_none(), "a release never submits");
        }
        out
    }

    /// Linux key codes of the US layout for lower-case letters and digits.
    fn us(text: &str) -> Vec<u16> {
        let row = |r: &str, first: u16, c: char| r.find(c).map(|i| first + i as u16);
        text.chars()
            .map(|c| {
                row("1234567890", 2, c)
                    .or(row("qwertyuiop", 16, c))
                    .or(row("asdfghjkl", 30, c))
                    .or(row("zxcvbnm", 44, c))
                    .unwrap_or_else(|| panic!("{c:?}"))
            })
            .collect()
    }

    #[test]
    fn types_a_name_and_a_password_and_submits_once() {
        let mut f = Form::new(Layout::Us, &prompt(None, None));
        assert_eq!(f.view().focus, Field::User);
        tap(&mut f, &us("alice"));
        assert!(tap(&mut f, &[ENTER]).is_none(), "Enter in the name moves to the password");
        assert_eq!(f.view().focus, Field::Password);
        // Shift+s makes a capital S; the view shows nothing of it.
        let before = f.view();
        f.key(SHIFT, true);
        tap(&mut f, &us("s"));
        f.key(SHIFT, false);
        tap(&mut f, &us("ecret1"));
        assert_eq!(f.view(), before);
        let s = tap(&mut f, &[ENTER]).expect("submitted");
        assert_eq!(s.user, "alice");
        assert_eq!(s.password.expose(), "Secret1");
        assert_eq!(format!("{s:?}").matches("Secret1").count(), 0, "Debug never shows it");
        assert!(f.password.is_empty() && f.password.capacity() >= MAX_PASSWORD);
        // A second Enter while the broker checks sends nothing.
        tap(&mut f, &us("x"));
        assert!(tap(&mut f, &[ENTER]).is_none());
        assert_eq!(f.view().message.as_deref(), Some("Checking..."));
    }

    #[test]
    fn a_failed_login_gives_the_name_back_and_asks_for_the_password_again() {
        let mut f = Form::new(Layout::Us, &prompt(None, None));
        tap(&mut f, &us("bob"));
        tap(&mut f, &[TAB]);
        tap(&mut f, &us("wrong"));
        assert!(tap(&mut f, &[ENTER]).is_some());
        f.prompt(&prompt(Some("bob"), Some("Wrong user name or password.")));
        let v = f.view();
        assert_eq!((v.user.as_str(), v.focus), ("bob", Field::Password));
        assert_eq!(v.message.as_deref(), Some("Wrong user name or password."));
        assert!(f.password.is_empty());
        tap(&mut f, &us("right"));
        assert_eq!(tap(&mut f, &[ENTER]).expect("again").password.expose(), "right");
    }

    #[test]
    fn german_layout_backspace_tab_and_escape() {
        let mut f = Form::new(Layout::De, &prompt(None, None));
        // On a German keyboard the key right of T types z, and AltGr+Q types @.
        tap(&mut f, &[21, 39]);
        f.key(100, true);
        tap(&mut f, &[16]);
        f.key(100, false);
        assert_eq!(f.view().user, "zö@");
        tap(&mut f, &[BACKSPACE]);
        assert_eq!(f.view().user, "zö");
        tap(&mut f, &[TAB]);
        tap(&mut f, &[39, 39, BACKSPACE]);
        assert_eq!(f.password, "ö".as_bytes());
        tap(&mut f, &[ESC]);
        let v = f.view();
        assert_eq!((v.user.as_str(), v.focus, v.message), ("", Field::User, None));
        assert!(f.password.is_empty());
    }

    #[test]
    fn empty_fields_are_not_submitted_and_ctrl_types_nothing() {
        let mut f = Form::new(Layout::Us, &prompt(None, None));
        tap(&mut f, &[TAB]);
        assert!(tap(&mut f, &[ENTER]).is_none());
        assert_eq!(f.view().focus, Field::User, "sent back to the empty name");
        tap(&mut f, &us("carol"));
        f.key(29, true);
        tap(&mut f, &us("u"));
        f.key(29, false);
        assert_eq!(f.view().user, "carol");
        tap(&mut f, &[TAB, ENTER]);
        assert_eq!(f.view().message.as_deref(), Some("Type your password."));
    }

    #[test]
    fn fields_stop_at_the_protocol_limits() {
        let mut f = Form::new(Layout::Us, &prompt(Some(&"n".repeat(MAX_LOGIN_NAME + 50)), None));
        assert_eq!(f.view().user.len(), MAX_LOGIN_NAME);
        tap(&mut f, &[TAB]);
        tap(&mut f, &us("a"));
        assert_eq!(f.view().user.len(), MAX_LOGIN_NAME);
        tap(&mut f, &[TAB]);
        let capacity = f.password.capacity();
        for _ in 0..MAX_PASSWORD + 10 {
            tap(&mut f, &us("p"));
        }
        assert_eq!(f.password.len(), MAX_PASSWORD);
        assert_eq!(f.password.capacity(), capacity, "the buffer never moved");
        assert_eq!(tap(&mut f, &[ENTER]).unwrap().password.expose().len(), MAX_PASSWORD);
    }
}
