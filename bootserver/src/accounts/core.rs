//! The pure part of accounts: what a valid name, password and policy are, and the argon2id
//! hashes. No I/O here, so that the rules can be tested (and fuzzed) on their own.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

/// Longest user name, in bytes (the safe set is ASCII, so also in characters).
pub const NAME_MAX: usize = 32;
/// Longest template name.
pub const TEMPLATE_MAX: usize = 64;
/// Longest password taken, in bytes: a hostile client must not make us hash megabytes.
pub const PASSWORD_MAX: usize = 256;
/// Shortest password that `user add`, `user passwd` and the admin API set. Logins take any
/// non-empty password up to [`PASSWORD_MAX`] (an LDAP directory has rules of its own).
pub const PASSWORD_MIN: usize = 8;

/// What may be wrong with a name, a password or a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("user name \"{0}\": {1}")]
    Name(String, &'static str),
    #[error("template name \"{0}\": {1}")]
    Template(String, &'static str),
    #[error("the password is longer than {PASSWORD_MAX} bytes")]
    PasswordTooLong,
    #[error("the password is shorter than {PASSWORD_MIN} characters")]
    PasswordTooShort,
}

const NAME_RULE: &str = "use 1 to 32 characters: a lower-case letter first, then lower-case letters, digits, '.', '_' or '-'";
const TEMPLATE_RULE: &str =
    "use 1 to 64 characters: a letter or digit first, then letters, digits, '.', '_' or '-'";

/// Checks a user name: 1 to [`NAME_MAX`] characters, `[a-z][a-z0-9._-]*`. The set is safe in
/// file names, in log lines, in an LDAP DN or filter (escaped anyway) and as a Unix login name.
pub fn validate_name(name: &str) -> Result<(), InvalidInput> {
    let first_ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let rest_ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if name.len() > NAME_MAX || !first_ok || !rest_ok {
        return Err(InvalidInput::Name(crate::logsafe::Esc(name).to_string(), NAME_RULE));
    }
    Ok(())
}

/// Checks a template name: 1 to [`TEMPLATE_MAX`] characters, `[A-Za-z0-9][A-Za-z0-9._-]*`
/// (it names a folder of templates on the hosts: no `/`, no leading dot).
pub fn validate_template(name: &str) -> Result<(), InvalidInput> {
    let first_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.len() > TEMPLATE_MAX || !first_ok || !rest_ok {
        return Err(InvalidInput::Template(crate::logsafe::Esc(name).to_string(), TEMPLATE_RULE));
    }
    Ok(())
}

/// Checks a password that is about to be set.
pub fn validate_new_password(password: &str) -> Result<(), InvalidInput> {
    if password.len() > PASSWORD_MAX {
        return Err(InvalidInput::PasswordTooLong);
    }
    if password.chars().count() < PASSWORD_MIN {
        return Err(InvalidInput::PasswordTooShort);
    }
    Ok(())
}

/// What a user may do besides using a desktop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
    /// May look at the web console, not change anything.
    Readonly,
}

/// Whether a user's desktop outlives the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desktop {
    /// The same disk at every login.
    #[default]
    Persistent,
    /// A fresh copy of the template at every login, thrown away at logout.
    OneTime,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Readonly => "readonly",
        }
    }
}

impl Desktop {
    pub fn as_str(self) -> &'static str {
        match self {
            Desktop::Persistent => "persistent",
            Desktop::OneTime => "one-time",
        }
    }
}

/// Which desktop a user gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The template the desktop is made from; `None`: the deployment's default.
    pub template: Option<String>,
    pub desktop: Desktop,
}

/// An account as everyone outside the store sees it: never with its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    pub enabled: bool,
    #[serde(flatten)]
    pub policy: Policy,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

/// An argon2id PHC string of `password` with a fresh random salt and the crate's default
/// costs (19 MiB, 2 passes). Slow on purpose: call it off the async runtime.
pub fn hash_password(password: &str) -> Result<String, InvalidInput> {
    if password.len() > PASSWORD_MAX {
        return Err(InvalidInput::PasswordTooLong);
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes is a valid salt length");
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters and a valid salt cannot fail")
        .to_string())
}

/// Whether `password` matches the PHC string `phc`. A PHC string that does not parse matches
/// nothing (and is logged by the caller, which knows whose it is).
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > PASSWORD_MAX {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password with the same costs as real ones: checking a password for an
/// unknown user against it takes as long as checking a wrong one for a known user, so the
/// time of an answer does not tell which names exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        hash_password(&random).expect("a 32-byte password is within the bound")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_safe_set() {
        for ok in ["a", "alice", "j.doe", "x_1-2", &"a".repeat(NAME_MAX)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "Alice", "1abc", ".a", "-a", "a b", "a/b", "a,b", "a*", "é", "a\n", &"a".repeat(NAME_MAX + 1)] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("lower-case letter first"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn templates_are_folder_names_without_paths() {
        validate_template("debian-12.desktop").unwrap();
        for bad in ["", ".hidden", "../etc", "a/b", "a b"] {
            assert!(validate_template(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_bounded_before_hashing() {
        assert_eq!(validate_new_password("short"), Err(InvalidInput::PasswordTooShort));
        validate_new_password("long enough").unwrap();
        let huge = "x".repeat(PASSWORD_MAX + 1);
        assert_eq!(validate_new_password(&huge), Err(InvalidInput::PasswordTooLong));
        assert_eq!(hash_password(&huge), Err(InvalidInput::PasswordTooLong));
        assert!(!verify_password(&huge, dummy_hash()));
    }

    #[test]
    fn hashes_are_argon2id_phc_salted_and_verify() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "no salt");
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("correct horsE", &a));
        assert!(!verify_password("correct horse", "not a phc string"));
        assert!(!verify_password("", dummy_hash()));
        // The dummy costs what a real hash costs.
        assert_eq!(dummy_hash().rsplitn(3, '$').nth(2), a.rsplitn(3, '$').nth(2));
    }

    #[test]
    fn policies_read_as_documented() {
        let p: Policy = serde_json::from_str(r#"{"template":"kiosk","desktop":"one-time"}"#).unwrap();
        assert_eq!(p, Policy { template: Some("kiosk".into()), desktop: Desktop::OneTime });
        assert!(serde_json::from_str::<Role>(r#""root""#).is_err());
        assert_eq!(serde_json::to_string(&Role::Admin).unwrap(), r#""admin""#);
    }

    proptest! {
        #[test]
        fn a_valid_name_is_safe_everywhere(name in "\\PC{0,40}") {
            if validate_name(&name).is_ok() {
                prop_assert!(!name.is_empty() && name.len() <= NAME_MAX);
                prop_assert!(name.bytes().all(|b| b.is_ascii_graphic() && !b"/\\,=+<>#;\"*()".contains(&b)));
            }
        }

        #[test]
        fn names_of_the_set_are_taken(name in "[a-z][a-z0-9._-]{0,31}") {
            prop_assert!(validate_name(&name).is_ok());
        }
    }
}
