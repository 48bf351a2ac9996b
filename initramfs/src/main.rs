//! `initramfs`: build, inspect and reflash boot images.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use log::info;

use initramfs::compress::Compression;
use initramfs::image::{mode_string, Image, Limits};
use initramfs::newc::{Entry, S_IFDIR, S_IFLNK, S_IFREG};
use initramfs::{build, config, diff, extract, verify};

/// Build, inspect and reflash Linux initramfs images.
///
/// Reads what the kernel reads: newc cpio archives, plain or compressed with gzip, bzip2,
/// lzma, xz, lzo, lz4 (legacy frame) or zstd, several of them back to back (an early
/// microcode archive before the main one, as Debian and dracut ship them), with zero padding
/// between and after. Builds reproducible images from a TOML config.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Largest size any one member may claim, in bytes (guards against hostile images).
    #[arg(long, global = true, default_value_t = 1 << 30)]
    max_entry_size: u64,
    /// Largest total an image may unpack to, in bytes.
    #[arg(long, global = true, default_value_t = 4 << 30)]
    max_size: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image from a TOML config (see initramfs/examples/thinclient.toml).
    Build {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Overrides the config's `compression`.
        #[arg(long)]
        compression: Option<Compression>,
        /// Overrides the config's `compression_level`.
        #[arg(long)]
        level: Option<i32>,
        /// The boot server's CA certificate, put at /etc/thinclient/ca.pem for the agent;
        /// overrides the config's `ca_cert`.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// List the members, in archive order, as `cpio -t` and `lsinitramfs` do.
    List {
        image: PathBuf,
        /// `ls -l` style: mode, owner, size, mtime, name and symlink target.
        #[arg(short, long)]
        long: bool,
        /// Only the archives the image is made of: offset, compression, member count.
        #[arg(long)]
        archives: bool,
    },
    /// Unpack into DIR; nothing the archive holds is written outside it.
    ///
    /// Names that would land outside DIR (absolute, `..`, through a symlink) are refused, and
    /// no symlink on disk is followed while writing. What could reach beyond DIR is opt-in,
    /// as GNU cpio and tar do for ordinary users: without the flags below, device nodes are
    /// skipped with a warning, setuid/setgid bits are cleared and everything belongs to the
    /// user who extracts. DIR's own mode (the `.` member) is applied only when DIR is new.
    Extract {
        image: PathBuf,
        dir: PathBuf,
        /// Create character and block device nodes (needs root).
        #[arg(long)]
        devices: bool,
        /// Give members the archive's uid and gid (needs root).
        #[arg(long)]
        same_owner: bool,
        /// Keep setuid and setgid bits.
        #[arg(long)]
        preserve_setuid: bool,
    },
    /// Print one file (symlinks inside the image are followed).
    Cat { image: PathBuf, path: String },
    /// Check that the image can boot; exits 1 when it finds a problem.
    Verify { image: PathBuf },
    /// Compare the unpacked trees of two images; exits 1 when they differ.
    Diff { a: PathBuf, b: PathBuf },
    /// Add a file, folder or symlink to the main (last) archive.
    Add {
        image: PathBuf,
        /// Path inside the image.
        path: String,
        /// Host file whose contents (and permissions, unless --mode) to add.
        #[arg(long, conflicts_with_all = ["dir", "symlink"])]
        from: Option<PathBuf>,
        /// Add an empty folder.
        #[arg(long)]
        dir: bool,
        /// Add a symlink pointing to this target.
        #[arg(long)]
        symlink: Option<String>,
        /// Permission bits in octal, e.g. 755.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Write the result here instead of rewriting IMAGE in place.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Replace the contents of a file; every other member stays byte-identical.
    Replace {
        image: PathBuf,
        path: String,
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove a member (with --recursive, a folder and everything in it).
    Remove {
        image: PathBuf,
        path: String,
        #[arg(short, long)]
        recursive: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| format!("{s:?} is not an octal mode like 755"))?;
    if m > 0o7777 {
        return Err(format!("{s} is not a permission mode"));
    }
    Ok(m)
}

/// Writes through a temporary file in the same folder, so a failed write leaves the old image.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("writing {}", path.display()))
}

fn rewrite(img: &Image, image: &Path, out: Option<&Path>) -> Result<()> {
    let target = out.unwrap_or(image);
    write_atomic(target, &img.to_bytes()?)?;
    info!("wrote {}", target.display());
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let limits = Limits { max_entry: cli.max_entry_size, max_total: cli.max_size };
    let open = |p: &Path| Image::open(p, limits).with_context(|| format!("reading image {}", p.display()));
    match cli.cmd {
        Cmd::Build { config, out, compression, level, ca_cert } => {
            let mut loaded = config::Config::load(&config)?;
            if ca_cert.is_some() {
                loaded.config.ca_cert = ca_cert;
            }
            if let Some(c) = compression {
                loaded.config.compression = c;
            }
            if level.is_some() {
                loaded.config.compression_level = level;
            }
            let img = build::build(&loaded)?;
            let bytes = img.to_bytes()?;
            write_atomic(&out, &bytes)?;
            let report = verify::verify(&Image::parse(&bytes, limits)?);
            for p in &report.problems {
                log::warn!("{p}");
            }
            info!("wrote {} ({} bytes, {})", out.display(), bytes.len(), loaded.config.compression);
        }
        Cmd::List { image, long, archives } => {
            let img = open(&image)?;
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            if archives {
                for (i, s) in img.segments.iter().enumerate() {
                    writeln!(w, "{i}\toffset {}\t{}\t{} bytes\t{} members", s.offset, s.compression, s.raw.len(), s.entries.len())?;
                }
            } else {
                for e in img.entries() {
                    if long {
                        let target = if e.is_symlink() { format!(" -> {}", String::from_utf8_lossy(&e.data)) } else { String::new() };
                        writeln!(w, "{} {:>4} {:>4} {:>10} {:>10} {}{}", mode_string(e.mode), e.uid, e.gid, e.data.len(), e.mtime, e.name, target)?;
                    } else {
                        writeln!(w, "{}", e.name)?;
                    }
                }
            }
            w.flush()?;
        }
        Cmd::Extract { image, dir, devices, same_owner, preserve_setuid } => {
            let img = open(&image)?;
            let opts = extract::Options { devices, same_owner, preserve_setuid };
            let n = extract::extract(&img, &dir, &opts)?;
            info!("extracted {n} members into {}", dir.display());
        }
        Cmd::Cat { image, path } => {
            let img = open(&image)?;
            let view = img.view();
            let Some((real, e)) = view.resolve(&path) else { bail!("{path}: not in {}", image.display()) };
            if !e.is_file() {
                bail!("{path}: /{real} is not a regular file");
            }
            std::io::stdout().write_all(view.data(e))?;
        }
        Cmd::Verify { image } => {
            let img = open(&image)?;
            let r = verify::verify(&img);
            for n in &r.notes {
                println!("note: {n}");
            }
            for p in &r.problems {
                println!("problem: {p}");
            }
            if !r.ok() {
                println!("{}: {} problem(s)", image.display(), r.problems.len());
                return Ok(ExitCode::from(1));
            }
            println!("{}: ok ({} archives, {} members)", image.display(), img.segments.len(), img.entries().count());
        }
        Cmd::Diff { a, b } => {
            let lines = diff::diff(&open(&a)?, &open(&b)?);
            for l in &lines {
                println!("{l}");
            }
            if !lines.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Add { image, path, from, dir, symlink, mode, out } => {
            let mut img = open(&image)?;
            let entry = if let Some(src) = from {
                let meta = std::fs::metadata(&src).with_context(|| format!("{}", src.display()))?;
                let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
                Entry::new(path.clone(), S_IFREG | mode.unwrap_or(meta.permissions().mode() & 0o7777), data)
            } else if dir {
                Entry::new(path.clone(), S_IFDIR | mode.unwrap_or(0o755), vec![])
            } else if let Some(t) = symlink {
                Entry::new(path.clone(), S_IFLNK | 0o777, t.into_bytes())
            } else {
                bail!("add {path}: say what to add with --from FILE, --dir or --symlink TARGET");
            };
            img.add(entry)?;
            rewrite(&img, &image, out.as_deref())?;
        }
        Cmd::Replace { image, path, from, out } => {
            let mut img = open(&image)?;
            let data = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            img.replace(&path, data)?;
            rewrite(&img, &image, out.as_deref())?;
        }
        Cmd::Remove { image, path, recursive, out } => {
            let mut img = open(&image)?;
            let n = img.remove(&path, recursive)?;
            info!("removed {n} member(s)");
            rewrite(&img, &image, out.as_deref())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        // `initramfs list IMG | head` is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("initramfs: {e:#}");
            ExitCode::from(2)
        }
    }
}
