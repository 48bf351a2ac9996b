//! Disk images: read-only templates, qcow2 overlays on them (`qemu-img`), users' ext4 data
//! disks (`mkfs.ext4`), and sparse copies for backups.

use std::os::unix::fs::MetadataExt;
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

/// A qcow2 overlay whose reads fall through to the template; the template is never written.
pub(crate) fn create_overlay(qemu_img: &Path, template: &Path, overlay: &Path) -> Result<()> {
    run(
        Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(template)
            .arg(overlay),
        &format!("creating overlay {}", overlay.display()),
    )
}

/// A sparse raw file with an empty ext4 file system, labelled `data`.
pub(crate) fn create_data_disk(mkfs: &Path, path: &Path, mib: u64) -> Result<()> {
    let f = std::fs::File::create(path).map_err(crate::error::internal(format!("creating {}", path.display())))?;
    f.set_len(mib << 20).map_err(crate::error::internal(format!("sizing {}", path.display())))?;
    drop(f);
    let r = run(Command::new(mkfs).args(["-q", "-F", "-L", "data"]).arg(path), &format!("formatting {}", path.display()));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Copies keeping holes, so backups of a mostly empty disk stay small.
pub(crate) fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    run(
        Command::new("cp").arg("--sparse=always").arg("--").arg(from).arg(to),
        &format!("copying {} to {}", from.display(), to.display()),
    )
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
    fn unknown_and_invalid_templates() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(template(d.path(), "nope"), Err(Error::NotFound(_))));
        assert!(matches!(template(d.path(), "../etc"), Err(Error::BadRequest(_))));
    }
}
