//! Checks that an image can boot: sane names, an executable `/init`, modules that match the
//! image's kernel with their dependencies present, and dynamic binaries with their libraries.

use std::collections::{BTreeMap, BTreeSet};

use crate::elf;
use crate::image::{Image, View};
use crate::kmod;
use crate::newc::Entry;

/// What `verify` found: problems make the image unbootable or broken, notes are informative.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Folders ld.so searches inside the image.
fn image_lib_dirs() -> Vec<String> {
    elf::default_library_dirs()
}

pub fn verify(img: &Image) -> Report {
    let mut r = Report::default();
    let view = img.view();
    names(img, &mut r);
    init(&view, &mut r);
    modules(&view, &mut r);
    binaries(&view, &mut r);
    r
}

fn names(img: &Image, r: &mut Report) {
    let mut seen = BTreeSet::new();
    for e in img.entries() {
        if e.name.starts_with('/') || e.name.split('/').any(|c| c == "..") {
            r.problems.push(format!("{}: name leaves the root (absolute or `..`)", e.name));
        }
        if !seen.insert(e.path()) && !e.is_dir() {
            r.notes.push(format!("{}: appears more than once; the last one wins", e.path()));
        }
    }
}

fn init(view: &View, r: &mut Report) {
    match view.resolve("init") {
        None if view.get("init").is_some() => r.problems.push("/init is a symlink that leads nowhere inside the image".into()),
        None => r.problems.push("/init is missing: the kernel will not run anything from this image".into()),
        Some((p, e)) if !e.is_file() => r.problems.push(format!("/init resolves to /{p}, which is not a regular file")),
        Some((p, e)) => {
            if e.mode & 0o111 == 0 {
                r.problems.push(format!("/init (/{p}) is not executable (mode {:o})", e.mode & 0o7777));
            }
            let data = view.data(e);
            if let Some(line) = data.strip_prefix(b"#!") {
                let line = String::from_utf8_lossy(line.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
                let interp = line.split_whitespace().next().unwrap_or_default().to_string();
                if view.resolve(&interp).is_none() {
                    r.problems.push(format!("/init is a script for {interp}, which is not in the image"));
                }
            } else if !elf::is_elf(data) {
                r.problems.push("/init is neither an ELF binary nor a #! script".into());
            }
        }
    }
}

/// `lib/modules/<version>/` folders in the image, with the module entries under each.
fn module_trees<'a>(view: &View<'a>) -> BTreeMap<String, Vec<(String, &'a Entry)>> {
    let mut out: BTreeMap<String, Vec<(String, &'a Entry)>> = BTreeMap::new();
    for (path, (_, e)) in &view.map {
        let rest = path.strip_prefix("lib/modules/").or_else(|| path.strip_prefix("usr/lib/modules/"));
        if let Some((version, rel)) = rest.and_then(|r| r.split_once('/')) {
            if e.is_file() && kmod::module_name(rel) != rel.rsplit('/').next().unwrap_or(rel) {
                out.entry(version.to_string()).or_default().push((rel.to_string(), *e));
            }
        }
    }
    out
}

fn modules(view: &View, r: &mut Report) {
    for (version, mods) in module_trees(view) {
        let present: BTreeSet<String> = mods.iter().map(|(rel, _)| kmod::module_name(rel)).collect();
        let mut checked = 0;
        for (rel, e) in &mods {
            let data = match kmod::module_bytes(rel, view.data(e).to_vec()) {
                Ok(d) => d,
                Err(err) => {
                    r.problems.push(format!("module {rel}: {err:#}"));
                    continue;
                }
            };
            let info = match kmod::modinfo(&data) {
                Ok(i) => i,
                Err(err) => {
                    r.problems.push(format!("module {rel}: {err:#}"));
                    continue;
                }
            };
            checked += 1;
            match kmod::vermagic_release(&info) {
                Some(v) if v == version => {}
                Some(v) => r.problems.push(format!("module {rel} is built for kernel {v}, but sits under lib/modules/{version}")),
                None => r.problems.push(format!("module {rel} has no vermagic")),
            }
            for (k, deps) in &info {
                if k != "depends" {
                    continue;
                }
                for d in deps.split(',').filter(|d| !d.is_empty()) {
                    if !present.contains(&kmod::module_name(d)) {
                        r.problems.push(format!("module {rel} depends on {d}, which is not in the image"));
                    }
                }
            }
        }
        r.notes.push(format!("kernel {version}: {checked} modules checked"));
    }
}

fn binaries(view: &View, r: &mut Report) {
    let dirs = image_lib_dirs();
    let mut checked = 0;
    for (path, (_, e)) in &view.map {
        if !e.is_file() || path.contains("/modules/") {
            continue;
        }
        let data = view.data(e);
        let d = match elf::dynamic(data) {
            Ok(Some(d)) if d.is_dynamic() => d,
            Ok(_) => continue,
            Err(err) => {
                r.notes.push(format!("/{path}: {err:#}"));
                continue;
            }
        };
        checked += 1;
        if let Some(interp) = &d.interpreter {
            if view.resolve(interp).is_none() {
                r.problems.push(format!("/{path}: interpreter {interp} is not in the image"));
            }
        }
        let origin = format!("/{}", path.rsplit_once('/').map(|(d, _)| d).unwrap_or(""));
        for lib in &d.needed {
            let found = elf::search_path(&d, &origin, &dirs).iter().any(|dir| view.resolve(&format!("{dir}/{lib}")).is_some_and(|(_, e)| e.is_file()));
            if !found {
                r.problems.push(format!("/{path}: needs {lib}, which is not in the image's library folders"));
            }
        }
    }
    r.notes.push(format!("{checked} dynamic binaries checked"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use crate::newc::{S_IFDIR, S_IFLNK, S_IFREG};

    #[test]
    fn finds_missing_and_bad_init() {
        let img = Image::single(Compression::None, vec![Entry::new("bin", S_IFDIR | 0o755, vec![])]);
        assert!(verify(&img).problems.iter().any(|p| p.contains("/init is missing")));
        let img = Image::single(Compression::None, vec![Entry::new("init", S_IFREG | 0o644, b"#!/bin/sh\n".to_vec())]);
        let r = verify(&img);
        assert!(r.problems.iter().any(|p| p.contains("not executable")), "{r:?}");
        assert!(r.problems.iter().any(|p| p.contains("/bin/sh")), "{r:?}");
        let img = Image::single(
            Compression::None,
            vec![
                Entry::new("init", S_IFREG | 0o755, b"#!/bin/sh\n".to_vec()),
                Entry::new("bin", S_IFDIR | 0o755, vec![]),
                Entry::new("bin/sh", S_IFLNK | 0o777, b"busybox".to_vec()),
                Entry::new("bin/busybox", S_IFREG | 0o755, b"\x7fELF".to_vec()),
            ],
        );
        let r = verify(&img);
        assert!(r.ok(), "{r:?}");
    }
}
