//! Which viewer the PC runs, and how it is started: the SDL2 viewer that the NFS root carries
//! (on KMS/DRM through Mesa's software rasterizer), or this executable's own fbdev viewer, which
//! needs nothing but `/dev/fb0` and is the fallback whenever the root cannot show the desktop.
//!
//! The root's viewer runs chrooted into the root, with the agent's /dev, /proc, /sys, /run and
//! /tmp bind-mounted into it. Why a chroot rather than the root's `ld.so --library-path`: the
//! loader alone finds the libraries the viewer links to, but Mesa, glvnd and SDL then open
//! more by absolute path (`/usr/lib/x86_64-linux-gnu/dri/*_dri.so`, glvnd's vendor JSON under
//! `/usr/share`, the loader cache `/etc/ld.so.cache` for every `dlopen`), and those paths only
//! mean the root's files when the root is `/`. The chroot also keeps the initramfs and the
//! root from mixing: nothing of one is linked into the other.

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use nix::mount::{mount, MsFlags};

/// Kernel command-line key: `tc.viewer=auto|nfs|builtin`.
pub(crate) const KEY_VIEWER: &str = "tc.viewer";
/// Kernel command-line key: `tc.allow_vnc_auth=1` lets the viewer answer a proxy that offers
/// only VNC authentication (off: such a proxy is refused, the token stays secret).
pub(crate) const KEY_ALLOW_VNC_AUTH: &str = "tc.allow_vnc_auth";
/// The viewer inside the NFS root (a `thinclient` built with SDL2, dynamically linked against
/// the root's libraries: `scripts/build-client-root --install-bin`).
pub(crate) const ROOT_VIEWER: &str = "usr/bin/thinclient";
/// The agent's folders the chrooted viewer needs, and whether their submounts (`/dev/pts`)
/// come along. /run is bound alone: it holds the root's own mount point.
const BINDS: &[(&str, bool)] = &[("dev", true), ("proc", true), ("sys", true), ("run", false), ("tmp", false)];

/// What `tc.viewer` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The root's SDL2 viewer when the root is there and holds one, else the built-in one.
    Auto,
    /// The root's SDL2 viewer only: no NFS root or no viewer in it is an error.
    Nfs,
    /// The built-in fbdev viewer, even with an NFS root.
    Builtin,
}

impl Mode {
    pub(crate) fn parse(value: Option<&str>) -> Result<Mode, String> {
        match value {
            None | Some("auto") => Ok(Mode::Auto),
            Some("nfs") => Ok(Mode::Nfs),
            Some("builtin") => Ok(Mode::Builtin),
            Some(other) => Err(format!("{KEY_VIEWER}={other:?} is not auto, nfs or builtin")),
        }
    }
}

/// How one viewer is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Launch {
    /// `PROGRAM view ADDR --presenter fbdev`: this executable, statically linked, on /dev/fb0.
    Builtin { program: PathBuf },
    /// [`ROOT_VIEWER`] chrooted into `root`, `--presenter sdl` on KMS/DRM.
    Root { root: PathBuf },
}

impl Launch {
    pub(crate) fn describe(&self) -> String {
        match self {
            Launch::Builtin { program } => format!("the built-in fbdev viewer ({})", program.display()),
            Launch::Root { root } => format!("the SDL2 viewer of the NFS root ({}/{ROOT_VIEWER})", root.display()),
        }
    }

    /// The command for showing `vnc`; the caller adds the session's token and password.
    pub(crate) fn command(&self, vnc: SocketAddr) -> anyhow::Result<Command> {
        match self {
            Launch::Builtin { program } => {
                let mut cmd = Command::new(program);
                // The console has no window system: the viewer draws into /dev/fb0.
                cmd.arg("view").arg(vnc.to_string()).arg("--presenter").arg("fbdev");
                Ok(cmd)
            }
            Launch::Root { root } => {
                let root_c = CString::new(root.as_os_str().as_bytes())
                    .with_context(|| format!("{} is not a usable path", root.display()))?;
                // Resolved after the chroot, inside the root.
                let mut cmd = Command::new(Path::new("/").join(ROOT_VIEWER));
                cmd.arg("view").arg(vnc.to_string()).arg("--presenter").arg("sdl");
                // The root's programs get the root's environment, not the initramfs's PATH.
                let keep: Vec<(String, String)> =
                    ["RUST_LOG", "RUST_BACKTRACE"].iter().filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?))).collect();
                cmd.env_clear().envs(keep);
                cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    // The root is read-only: home and caches in the agent's tmpfs.
                    .env("HOME", "/tmp")
                    .env("XDG_RUNTIME_DIR", "/tmp")
                    .env("SDL_VIDEODRIVER", "kmsdrm")
                    // A disk cache of compiled shaders would live in RAM and die at reboot.
                    .env("MESA_SHADER_CACHE_DISABLE", "true");
                // SAFETY: chroot(2) and chdir(2) are async-signal-safe system calls; the path
                // was allocated before the fork.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Ok(cmd)
            }
        }
    }
}

/// Why the root cannot run its viewer, if it cannot: checked before anything is mounted into it.
pub(crate) fn check_root(root: &Path) -> Result<(), String> {
    let viewer = root.join(ROOT_VIEWER);
    // The root is a merged-/usr Debian tree: its loader is usr/lib64/... behind the lib64 link.
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    match std::fs::metadata(&viewer) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => return Err(format!("{} is not an executable file", viewer.display())),
        Err(e) => return Err(format!("the NFS root has no viewer at {}: {e}", viewer.display())),
    }
    // Debian's lib64/ld-linux-x86-64.so.2 is an absolute link, which means the root's file only
    // inside the chroot: the link itself is what can be checked from here.
    if std::fs::symlink_metadata(&loader).is_err() {
        return Err(format!("the NFS root has no dynamic loader at {}", loader.display()));
    }
    for (dir, _) in BINDS {
        if !root.join(dir).is_dir() {
            return Err(format!("the NFS root lacks the folder /{dir} to mount the agent's onto"));
        }
    }
    Ok(())
}

/// Bind-mounts the agent's /dev, /proc, /sys, /run and /tmp onto the root's own (empty) ones.
/// A bind mount onto a read-only NFS directory changes nothing on the server.
pub(crate) fn bind_into(root: &Path) -> anyhow::Result<()> {
    for (dir, recursive) in BINDS {
        let source = Path::new("/").join(dir);
        let target = root.join(dir);
        let flags = if *recursive { MsFlags::MS_BIND | MsFlags::MS_REC } else { MsFlags::MS_BIND };
        mount(Some(&source), &target, None::<&str>, flags, None::<&str>)
            .with_context(|| format!("bind-mounting {} onto {}", source.display(), target.display()))?;
    }
    Ok(())
}

/// When the root's viewer counts as broken: it exited `limit` times in a row, each time within
/// `early` of its start. A viewer that cannot reach its server keeps running (it retries and
/// says so on screen), so quick exits mean SDL, Mesa or the libraries failed.
#[derive(Debug, Clone)]
pub(crate) struct GiveUp {
    limit: u32,
    early: Duration,
    quick_exits: u32,
}

impl GiveUp {
    pub(crate) fn new(limit: u32, early: Duration) -> Self {
        GiveUp { limit, early, quick_exits: 0 }
    }

    /// Records a run that lasted `ran`; true once the viewer should be given up.
    pub(crate) fn after_run(&mut self, ran: Duration) -> bool {
        if ran < self.early {
            self.quick_exits += 1;
        } else {
            self.quick_exits = 0;
        }
        self.quick_exits >= self.limit
    }

    pub(crate) fn describe(&self) -> String {
        format!("exited within {} s of its start {} times in a row", self.early.as_secs(), self.quick_exits)
    }
}

/// The viewers the supervisor starts: `first`, and `fallback` once `first` is given up.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub first: Launch,
    pub fallback: Option<Launch>,
    /// Environment for every viewer started (the CA's PEM, whether VNC authentication is
    /// allowed): the chrooted viewer sees nothing of the initramfs.
    pub env: Vec<(String, String)>,
}

/// Picks the viewers for `mode`. `root` is the mounted NFS root, or why there is none (not
/// asked for, or the mount failed). Returns the plan, or the reason `mode` cannot be met.
pub(crate) fn plan(mode: Mode, builtin: &Path, root: Result<&Path, String>) -> Result<Plan, String> {
    let builtin = Launch::Builtin { program: builtin.to_path_buf() };
    if mode == Mode::Builtin {
        log::info!("{KEY_VIEWER}=builtin: {}", builtin.describe());
        return Ok(Plan { first: builtin, fallback: None, env: Vec::new() });
    }
    let usable = root.and_then(|r| {
        check_root(r)?;
        bind_into(r).map_err(|e| format!("{e:#}"))?;
        Ok(r)
    });
    match (usable, mode) {
        (Ok(r), Mode::Nfs) => Ok(Plan { first: Launch::Root { root: r.to_path_buf() }, fallback: None, env: Vec::new() }),
        (Ok(r), _) => Ok(Plan { first: Launch::Root { root: r.to_path_buf() }, fallback: Some(builtin), env: Vec::new() }),
        (Err(why), Mode::Nfs) => Err(format!("{KEY_VIEWER}=nfs, but {why}")),
        (Err(why), _) => {
            log::warn!("{why}: using {}", builtin.describe());
            Ok(Plan { first: builtin, fallback: None, env: Vec::new() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_and_rejects_unknown_values() {
        assert_eq!(Mode::parse(None), Ok(Mode::Auto));
        assert_eq!(Mode::parse(Some("auto")), Ok(Mode::Auto));
        assert_eq!(Mode::parse(Some("nfs")), Ok(Mode::Nfs));
        assert_eq!(Mode::parse(Some("builtin")), Ok(Mode::Builtin));
        assert!(Mode::parse(Some("sdl")).unwrap_err().contains("auto, nfs or builtin"));
    }

    #[test]
    fn gives_up_after_quick_exits_in_a_row_only() {
        let mut g = GiveUp::new(3, Duration::from_secs(20));
        let quick = Duration::from_secs(1);
        assert!(!g.after_run(quick));
        assert!(!g.after_run(quick));
        // A run that lasted resets the count: the viewer works, its server went away.
        assert!(!g.after_run(Duration::from_secs(300)));
        assert!(!g.after_run(quick));
        assert!(!g.after_run(quick));
        assert!(g.after_run(quick));
        assert!(g.describe().contains("3 times"));
    }

    fn fake_root(dir: &Path, with_viewer: bool) {
        for d in ["dev", "proc", "sys", "run", "tmp", "usr/bin", "usr/lib64"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib64", dir.join("lib64")).unwrap();
        std::fs::write(dir.join("usr/lib64/ld-linux-x86-64.so.2"), b"").unwrap();
        if with_viewer {
            let v = dir.join(ROOT_VIEWER);
            std::fs::write(&v, b"#!").unwrap();
            std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn root_check_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        fake_root(dir.path(), false);
        assert!(check_root(dir.path()).unwrap_err().contains("no viewer at"));
        let v = dir.path().join(ROOT_VIEWER);
        std::fs::write(&v, b"").unwrap();
        assert!(check_root(dir.path()).unwrap_err().contains("not an executable"));
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_root(dir.path()), Ok(()));
        std::fs::remove_dir(dir.path().join("tmp")).unwrap();
        assert!(check_root(dir.path()).unwrap_err().contains("/tmp"));
    }

    #[test]
    fn plan_falls_back_or_refuses_by_mode() {
        let fb = Path::new("/init");
        let builtin = Launch::Builtin { program: fb.into() };
        let none = || Err("no NFS root (tc.nfsroot is not set)".to_string());
        let p = plan(Mode::Auto, fb, none()).unwrap();
        assert_eq!((p.first, p.fallback), (builtin.clone(), None));
        assert!(plan(Mode::Nfs, fb, none()).unwrap_err().contains("tc.viewer=nfs, but no NFS root"));
        // A root without a viewer: refused before anything is mounted into it.
        let dir = tempfile::tempdir().unwrap();
        fake_root(dir.path(), false);
        assert_eq!(plan(Mode::Auto, fb, Ok(dir.path())).unwrap().first, builtin);
        assert!(plan(Mode::Nfs, fb, Ok(dir.path())).unwrap_err().contains("no viewer"));
        let p = plan(Mode::Builtin, fb, Ok(dir.path())).unwrap();
        assert_eq!(p.first, builtin);
    }

    #[test]
    fn root_viewer_runs_sdl_on_kmsdrm_with_a_clean_environment() {
        let launch = Launch::Root { root: "/run/nfsroot".into() };
        let cmd = launch.command("10.0.0.1:5900".parse().unwrap()).unwrap();
        assert_eq!(cmd.get_program(), "/usr/bin/thinclient");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["view", "10.0.0.1:5900", "--presenter", "sdl"]);
        let env: Vec<_> = cmd.get_envs().map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned()))).collect();
        assert!(env.contains(&("SDL_VIDEODRIVER".into(), Some("kmsdrm".into()))));
        assert!(env.contains(&("HOME".into(), Some("/tmp".into()))));
        let builtin = Launch::Builtin { program: "/init".into() }.command("10.0.0.1:5900".parse().unwrap()).unwrap();
        let args: Vec<_> = builtin.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["view", "10.0.0.1:5900", "--presenter", "fbdev"]);
    }
}
