//! The state dir and the files in it, readable by the server's user only.
//!
//! The state dir holds the session tokens, the VMs' VNC passwords, the leases and the client
//! registry: the dir is 0700 and every file 0600, whatever the umask. Files are replaced
//! atomically (a temporary file in the same dir, fsynced, renamed over the old one), so that a
//! crash leaves either the old or the new content, never half of one.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the state dir and of the folders in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the state dir.
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct StateFileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateFileError + 'a {
    move |source| StateFileError { what, path: path.to_path_buf(), source }
}

/// Creates `dir` (and its parents) if needed and makes it 0700. Parents that did not exist are
/// made 0700 as well; existing parents are left alone.
pub fn private_dir(dir: &Path) -> Result<(), StateFileError> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(err("creating state dir", dir))?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(err("making private", dir))
}

/// Opens `path` for appending, created 0600 if missing, and makes an existing file 0600 too.
/// For files that a library opens by name afterwards (SQLite): it then finds a private file.
pub fn create_private(path: &Path) -> Result<File, StateFileError> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(err("creating", path))?;
    f.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(err("making private", path))?;
    Ok(f)
}

/// Replaces `path` with `data`, atomically, as a 0600 file.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), StateFileError> {
    write_with_mode(path, data, FILE_MODE)
}

/// Replaces `path` with `data`, atomically, with `mode` whatever the umask (a certificate that
/// others may read is 0644; everything secret goes through [`write_private`]).
pub fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), StateFileError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A stale temporary of a crashed run with our PID would make create_new fail.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("creating", &tmp))?;
        // The umask may have taken bits away from `mode`.
        f.set_permissions(Permissions::from_mode(mode)).map_err(err("setting the mode of", &tmp))?;
        f.write_all(data).map_err(err("writing", &tmp))?;
        f.sync_all().map_err(err("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(err("renaming into place", path))?;
        // The rename is durable once the dir's entry is.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err("syncing", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes the files and folders right in `dir` 0600 and 0700 (state files of an earlier version
/// were created world-readable). Only the top level: the state files live there, and a state
/// dir set by mistake to a folder of other files must not have a whole tree changed. Symlinks
/// are neither followed nor changed. Returns the paths whose mode changed.
pub fn tighten(dir: &Path) -> Result<Vec<PathBuf>, StateFileError> {
    let mut changed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err("reading", dir))? {
        let path = entry.map_err(err("reading", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(err("reading", &path))?;
        let want = if meta.is_dir() {
            DIR_MODE
        } else if meta.is_file() {
            FILE_MODE
        } else {
            continue;
        };
        if meta.permissions().mode() & 0o7777 != want {
            std::fs::set_permissions(&path, Permissions::from_mode(want)).map_err(err("making private", &path))?;
            changed.push(path);
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn dir_and_files_are_private_and_writes_replace_atomically() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("a/state");
        private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let f = state.join("leases");
        write_private(&f, b"one").unwrap();
        write_private(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(mode(&f), 0o600);
        // Only the file itself: no temporary left behind.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
        let db = state.join("clients.sqlite");
        create_private(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn tighten_fixes_old_top_level_files_but_not_symlink_targets() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        std::fs::create_dir_all(state.join("www")).unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, Permissions::from_mode(0o644)).unwrap();
        for (p, m) in [(state.join("sessions.sqlite"), 0o644), (state.join("www/x"), 0o644)] {
            std::fs::write(&p, b"x").unwrap();
            std::fs::set_permissions(&p, Permissions::from_mode(m)).unwrap();
        }
        std::fs::set_permissions(state.join("www"), Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("link")).unwrap();
        let changed = tighten(&state).unwrap();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(mode(&state.join("sessions.sqlite")), 0o600);
        assert_eq!(mode(&state.join("www")), 0o700);
        // Below the top level nothing is changed; the folder above it closes it anyway.
        assert_eq!(mode(&state.join("www/x")), 0o644);
        assert_eq!(mode(&outside), 0o644);
        assert!(tighten(&state).unwrap().is_empty());
    }
}
