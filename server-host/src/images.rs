//! Disk images: read-only templates, qcow2 overlays on them (`qemu-img`), users' ext4 data
//! disks (`mkfs.ext4`), and sparse copies for backups.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use proto::host::TemplateInfo;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A template as found in its folder.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub name: String,
    pub disk: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub description: String,
}

#[derive(Deserialize, Default)]
struct TemplateToml {
    #[serde(default)]
    description: String,
    #[serde(default)]
    cmdline: String,
}

pub(crate) fn template(dir: &Path, name: &str) -> Result<Template> {
    if !proto::host::valid_name(name) {
        return Err(Error::BadRequest(format!("template name {name:?} is not a valid name")));
    }
    let root = dir.join(name);
    let disk = root.join("disk.qcow2");
    if !disk.is_file() {
        return Err(Error::NotFound(format!("unknown template {name:?} (no {})", disk.display())));
    }
    let meta: TemplateToml = match std::fs::read_to_string(root.join("template.toml")) {
        Ok(t) => toml::from_str(&t)
            .map_err(|e| Error::Internal(format!("{}: {e}", root.join("template.toml").display())))?,
        Err(_) => TemplateToml::default(),
    };
    let opt = |f: &str| Some(root.join(f)).filter(|p| p.is_file());
    Ok(Template {
        name: name.to_owned(),
        disk,
        kernel: opt("vmlinuz"),
        initrd: opt("initrd.img"),
        cmdline: meta.cmdline,
        description: meta.description,
    })
}

pub(crate) fn templates(dir: &Path) -> Vec<TemplateInfo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(t) = template(dir, &name) {
            out.push(TemplateInfo { size: allocated(&t.disk), name, description: t.description });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Bytes a file really takes on disk (sparse files and qcow2 overlays are small).
pub(crate) fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

pub(crate) fn allocated_tree(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return allocated(p) };
    rd.flatten().map(|e| allocated_tree(&e.path())).sum()
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::Internal(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "{what}: {:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A folder only its owner may enter (users' disks, backups and VM sockets live below),
/// made with its parents when missing and tightened when it exists.
pub(crate) fn private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

/// Makes `p` (created empty when missing) readable and writable by its owner only.
pub(crate) fn private_file(p: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(p)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// The name a disk is made under beside `path` before it is renamed into place; a leftover
/// one (a crash half-way) is overwritten by the next attempt and removed at start-up.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Whether a file in a user's folder is one of [`temp_beside`]'s.
pub(crate) fn is_temp(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// Flushes `tmp` (0600), renames it to `path` and flushes the folder, so that after a crash
/// `path` is either the old file or the whole new one.
pub(crate) fn commit(tmp: &Path, path: &Path) -> Result<()> {
    let r = (|| {
        let f = std::fs::OpenOptions::new().write(true).open(tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::Internal(format!("writing {}: {e}", path.display()))
    })
}

/// Runs `make` on a temporary name beside `path` and moves the result into place only when
/// it succeeded.
fn atomically(path: &Path, make: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_beside(path);
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = make(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    commit(&tmp, path)
}

/// A qcow2 overlay whose reads fall through to the template; the template is never written.
pub(crate) fn create_overlay(qemu_img: &Path, template: &Path, overlay: &Path) -> Result<()> {
    atomically(overlay, |tmp| {
        run(
            Command::new(qemu_img).args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(template).arg(tmp),
            &format!("creating overlay {}", overlay.display()),
        )
    })
}

/// A sparse raw file with an empty ext4 file system, labelled `data`. It only gets its name
/// once formatted, so a crash never leaves an unformatted disk under that name.
pub(crate) fn create_data_disk(mkfs: &Path, path: &Path, mib: u64) -> Result<()> {
    atomically(path, |tmp| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(crate::error::internal(format!("creating {}", tmp.display())))?;
        f.set_len(mib << 20).map_err(crate::error::internal(format!("sizing {}", tmp.display())))?;
        drop(f);
        run(Command::new(mkfs).args(["-q", "-F", "-L", "data"]).arg(tmp), &format!("formatting {}", path.display()))
    })
}

/// Bytes at the start of a disk where every file system and partition table we know of keeps
/// its first structure (MBR/GPT, ext4 and XFS superblocks, btrfs's at 64 KiB).
const HEAD: usize = 128 << 10;

/// True when the disk at `p` was never formatted: its head holds nothing but zeros (a file
/// sized by an older version that crashed before `mkfs` wrote a superblock).
pub(crate) fn unformatted(p: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(p)?.take(HEAD as u64).read_to_end(&mut head)?;
    Ok(head.iter().all(|b| *b == 0))
}

/// The user's data disk at `path`: made when missing, and made again when an earlier crash
/// left it unformatted. Returns whether it was (re)made.
pub(crate) fn ensure_data_disk(mkfs: &Path, path: &Path, mib: u64) -> Result<bool> {
    match unformatted(path) {
        Ok(false) => return Ok(false),
        Ok(true) => log::warn!("{}: never formatted (left by a crash); formatting it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Internal(format!("reading {}: {e}", path.display()))),
    }
    create_data_disk(mkfs, path, mib)?;
    Ok(true)
}

/// Copies keeping holes, so backups of a mostly empty disk stay small. The copy is made
/// beside `to`, flushed and then renamed over it: `to` is never half-written.
pub(crate) fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = stage_copy(from, to)?;
    commit(&tmp, to)
}

/// The first half of [`sparse_copy`]: the copy under [`temp_beside`]`(to)`. Moving it into
/// place is left to the caller ([`commit`]), so that several can be staged before any is.
pub(crate) fn stage_copy(from: &Path, to: &Path) -> Result<PathBuf> {
    let tmp = temp_beside(to);
    let _ = std::fs::remove_file(&tmp);
    let r = run(
        Command::new("cp").arg("--sparse=always").arg("--").arg(from).arg(&tmp),
        &format!("copying {} to {}", from.display(), to.display()),
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_and_data_disk_are_small_and_real() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M"), "base").unwrap();
        let ov = d.path().join("ov.qcow2");
        create_overlay(Path::new("qemu-img"), &base, &ov).unwrap();
        let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&ov).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["backing-filename"].as_str().unwrap(), base.to_str().unwrap());
        assert!(allocated(&ov) < 1 << 20);
        assert_eq!(std::fs::metadata(&ov).unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(!temp_beside(&ov).exists());
        let data = d.path().join("data.img");
        create_data_disk(Path::new("mkfs.ext4"), &data, 16).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().len(), 16 << 20);
        let copy = d.path().join("copy.img");
        sparse_copy(&data, &copy).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&data).unwrap());
        assert!(allocated(&copy) < 8 << 20, "the copy keeps holes");
        let err = create_overlay(Path::new("qemu-img"), &d.path().join("missing"), &d.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn disks_appear_whole_or_not_at_all_and_unformatted_ones_are_formatted() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data.img");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        // A format that fails leaves neither the disk nor its temporary file.
        assert!(create_data_disk(Path::new("false"), &data, 16).is_err());
        assert!(!data.exists() && !temp_beside(&data).exists());
        assert!(create_overlay(Path::new("false"), &data, &d.path().join("os.qcow2")).is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // Sized but never formatted (what a crash before mkfs left), next to a cut copy.
        std::fs::File::create(&data).unwrap().set_len(16 << 20).unwrap();
        std::fs::write(temp_beside(&data), b"half").unwrap();
        assert!(unformatted(&data).unwrap());
        assert!(ensure_data_disk(Path::new("mkfs.ext4"), &data, 16).unwrap());
        assert!(!unformatted(&data).unwrap());
        assert_eq!(&std::fs::read(&data).unwrap()[1080..1082], &[0x53, 0xef], "ext4 magic");
        assert_eq!(mode(&data), 0o600);
        assert!(!temp_beside(&data).exists());
        // A formatted disk (one in use) is never touched.
        let before = std::fs::read(&data).unwrap();
        assert!(!ensure_data_disk(Path::new("false"), &data, 16).unwrap());
        assert!(std::fs::read(&data).unwrap() == before);
        // A copy replaces its target only once it is whole.
        let to = d.path().join("copy.img");
        std::fs::write(&to, b"old").unwrap();
        assert!(sparse_copy(&d.path().join("missing"), &to).is_err());
        assert_eq!(std::fs::read(&to).unwrap(), b"old");
        sparse_copy(&data, &to).unwrap();
        assert!(std::fs::read(&to).unwrap() == before);
        assert_eq!(mode(&to), 0o600);
    }

    #[test]
    fn unknown_and_invalid_templates() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(template(d.path(), "nope"), Err(Error::NotFound(_))));
        assert!(matches!(template(d.path(), "../etc"), Err(Error::BadRequest(_))));
    }
}
