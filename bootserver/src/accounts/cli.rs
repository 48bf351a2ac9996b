//! `bootserver user ...`: the account store of a state dir, changed in place (also while
//! `bootserver serve` runs: the store is in WAL mode and waits for the server's writes).

use std::io::{BufRead, IsTerminal, Read};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::core::{hash_password, validate_new_password, Desktop, Policy, Role, PASSWORD_MAX};
use super::store::{AccountStore, Change};
use crate::ca::cli::Where;

/// How the password of `add` and `passwd` is given.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of standard input instead of asking for it
    /// twice on the terminal (for scripts: `printf '%s\n' "$PW" | bootserver user add ...`).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user who logs in with a password.
    ///
    /// Examples:
    ///   bootserver user add alice
    ///   bootserver user add bob --admin --template office
    ///   printf '%s\n' "$PW" | bootserver user add kiosk1 --template kiosk --one-time --password-stdin
    #[command(verbatim_doc_comment)]
    Add {
        /// 1 to 32 characters: a lower-case letter, then lower-case letters, digits, . _ -
        name: String,
        /// May use the admin functions (role `admin` instead of `user`).
        #[arg(long, conflicts_with = "readonly")]
        admin: bool,
        /// May look at the web console without changing anything (role `readonly`).
        #[arg(long)]
        readonly: bool,
        /// The desktop template the user's desktop is made from. Default: the deployment's.
        #[arg(long)]
        template: Option<String>,
        /// A fresh desktop at every login, thrown away at logout (default: persistent).
        #[arg(long)]
        one_time: bool,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        at: Where,
    },
    /// Set a user's password.
    ///
    /// Example: bootserver user passwd alice
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        at: Where,
    },
    /// Set a user's role: user, admin (the console and every change) or readonly (the console,
    /// looking only).
    ///
    /// Example: bootserver user role carol readonly
    Role {
        name: String,
        #[arg(value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        at: Where,
    },
    /// Refuse the user's logins (the account and its settings are kept).
    ///
    /// Example: bootserver user disable alice
    Disable {
        name: String,
        #[command(flatten)]
        at: Where,
    },
    /// Take the user's logins again.
    ///
    /// Example: bootserver user enable alice
    Enable {
        name: String,
        #[command(flatten)]
        at: Where,
    },
    /// Remove a user.
    ///
    /// Example: bootserver user del alice
    Del {
        name: String,
        #[command(flatten)]
        at: Where,
    },
    /// List the users (never their password hashes).
    ///
    /// Example: bootserver user list --json
    List {
        /// JSON, as the admin API's GET /api/users answers.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Where,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("{text:?} is not a role: use user, admin or readonly"))
}

fn open(at: &Where) -> anyhow::Result<AccountStore> {
    let (state, _) = at.resolve()?;
    Ok(AccountStore::open_in(&state)?)
}

/// The new password: the first line of stdin, or asked twice on the terminal.
fn read_password(args: &PasswordArgs, name: &str) -> anyhow::Result<String> {
    let password = if args.password_stdin {
        // One byte more than allowed, so that an overlong line is noticed, not cut short.
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(PASSWORD_MAX as u64 + 2)
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line).to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("standard input is not a terminal: give the password on it with --password-stdin");
        }
        let first = rpassword::prompt_password(format!("New password for {name}: "))?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ; nothing changed");
        }
        first
    };
    validate_new_password(&password).with_context(|| format!("password of {name}"))?;
    Ok(password)
}

pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { name, admin, readonly, template, one_time, password, at } => {
            super::core::validate_name(&name)?;
            let store = open(&at)?;
            if store.get(&name)?.is_some() {
                return Err(super::store::AccountError::Exists(name).into());
            }
            let phc = hash_password(&read_password(&password, &name)?)?;
            let role = match (admin, readonly) {
                (true, _) => Role::Admin,
                (_, true) => Role::Readonly,
                _ => Role::User,
            };
            let policy = Policy { template, desktop: if one_time { Desktop::OneTime } else { Desktop::Persistent } };
            let a = store.add(&name, &phc, role, &policy)?;
            println!("user {} added ({}, {} desktop{})", a.name, a.role.as_str(), a.policy.desktop.as_str(), template_note(&a.policy));
        }
        UserCommand::Passwd { name, password, at } => {
            let store = open(&at)?;
            if store.get(&name)?.is_none() {
                return Err(super::store::AccountError::NotFound(name).into());
            }
            let phc = hash_password(&read_password(&password, &name)?)?;
            store.update(&name, &Change { phc: Some(phc), ..Default::default() })?;
            println!("password of {name} changed");
        }
        UserCommand::Role { name, role, at } => {
            open(&at)?.update(&name, &Change { role: Some(role), ..Default::default() })?;
            println!("user {name} is now {}", role.as_str());
        }
        UserCommand::Disable { name, at } => {
            open(&at)?.update(&name, &Change { enabled: Some(false), ..Default::default() })?;
            println!("user {name} disabled");
        }
        UserCommand::Enable { name, at } => {
            open(&at)?.update(&name, &Change { enabled: Some(true), ..Default::default() })?;
            println!("user {name} enabled");
        }
        UserCommand::Del { name, at } => {
            open(&at)?.delete(&name)?;
            println!("user {name} removed");
        }
        UserCommand::List { json, at } => {
            let users = open(&at)?.list()?;
            if json {
                println!("{}", serde_json::to_string(&users)?);
            } else {
                print!("{}", table(&users));
            }
        }
    }
    Ok(())
}

fn template_note(p: &Policy) -> String {
    p.template.as_ref().map(|t| format!(", template {t}")).unwrap_or_default()
}

/// The human-readable list.
pub fn table(users: &[super::core::Account]) -> String {
    let mut out = format!("{:<32}  {:<8}  {:<8}  {:<10}  {}\n", "NAME", "ROLE", "ENABLED", "DESKTOP", "TEMPLATE");
    for u in users {
        out.push_str(&format!(
            "{:<32}  {:<8}  {:<8}  {:<10}  {}\n",
            u.name,
            u.role.as_str(),
            if u.enabled { "yes" } else { "no" },
            u.policy.desktop.as_str(),
            u.policy.template.as_deref().unwrap_or("-"),
        ));
    }
    out
}
