//! What a dynamic ELF binary needs at run time: its interpreter and the shared libraries named
//! by DT_NEEDED, searched the way ld.so does (DT_RPATH, then the default folders, then
//! DT_RUNPATH, with `$ORIGIN` expanded).

use anyhow::{Context, Result};

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    pub rpath: Vec<String>,
    pub runpath: Vec<String>,
}

impl Dynamic {
    pub fn is_dynamic(&self) -> bool {
        self.interpreter.is_some() || !self.needed.is_empty()
    }
}

pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Reads the dynamic section of an ELF file; `None` for anything that is not ELF.
pub fn dynamic(data: &[u8]) -> Result<Option<Dynamic>> {
    if !is_elf(data) {
        return Ok(None);
    }
    let elf = goblin::elf::Elf::parse(data).context("malformed ELF")?;
    let split = |v: &[&str]| v.iter().flat_map(|s| s.split(':')).filter(|s| !s.is_empty()).map(String::from).collect();
    Ok(Some(Dynamic {
        interpreter: elf.interpreter.map(String::from),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
    }))
}

/// The folders ld.so searches for `name`, in order, for a binary that lives in `origin`.
pub fn search_path(d: &Dynamic, origin: &str, defaults: &[String]) -> Vec<String> {
    let expand = |p: &String| p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin);
    let mut out = Vec::new();
    if d.runpath.is_empty() {
        out.extend(d.rpath.iter().map(expand));
    }
    out.extend(defaults.iter().cloned());
    out.extend(d.runpath.iter().map(expand));
    out
}

/// The default library folders of x86-64 Debian (multiarch first), also used inside images.
pub fn default_library_dirs() -> Vec<String> {
    [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_host_binary() {
        let data = std::fs::read("/bin/sh").unwrap();
        let d = dynamic(&data).unwrap().unwrap();
        assert!(d.interpreter.unwrap().contains("ld-linux"));
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")));
        assert_eq!(dynamic(b"#!/bin/sh\n").unwrap(), None);
        assert!(dynamic(b"\x7fELF garbage").is_err());
    }

    #[test]
    fn rpath_before_defaults_runpath_after() {
        let d = Dynamic { rpath: vec!["$ORIGIN/../lib".into()], ..Default::default() };
        assert_eq!(search_path(&d, "/opt/x/bin", &["/lib".into()]), ["/opt/x/bin/../lib", "/lib"]);
        let d = Dynamic { rpath: vec!["/r".into()], runpath: vec!["/rp".into()], ..Default::default() };
        assert_eq!(search_path(&d, "/", &["/lib".into()]), ["/lib", "/rp"]);
    }
}
