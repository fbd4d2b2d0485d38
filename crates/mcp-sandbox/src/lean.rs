//! The lean mount namespace bubblewrap is started in.
//!
//! bubblewrap copies its parent's whole mount table into every sandbox's
//! new mount namespace and re-reads it (`/proc/self/mountinfo`) once per
//! bind of the profile, to make each bind's submounts read-only. Every
//! sandbox start therefore costs CPU in proportion to the host's mount
//! table: ≈ 3.5-4 ms per 100 mounts with the `default` profile on the
//! reference VM (docs/PERFORMANCE.md), and hosts running containers have
//! hundreds.
//!
//! [`build`] prepares once a mount namespace whose root is a small tmpfs holding only what sandboxes are
//! built from: bubblewrap and its libraries (`/usr`, `/etc`, the host's
//! top-level symlinks such as `/lib64 -> usr/lib64`), `/proc` and `/dev`,
//! every source a profile binds, the sockets and files directories and
//! the egress forwarder, each bound recursively at its own path. Every
//! bubblewrap then starts inside it (the spawn's child `setns`es into it
//! before dropping root). The sandboxes are built by the same argv from
//! the same sources, so what a command sees does not change; only the
//! table bubblewrap copies and re-reads is smaller. The namespace is a
//! slave of the host's: mounts made later under a bound path still appear
//! in it, and nothing mounted in it appears on the host.
//!
//! It is built by a child cloned into a new mount namespace (`builder`;
//! sharing memory and descriptors, suspending only the calling thread, as
//! `sys::Spawn` does), which makes the host's mounts slaves, builds the
//! table with plain syscalls from a plan the parent prepared, pivots into
//! it, opens the namespace into the shared descriptor table and exits.
//! Unprivileged, a mount namespace needs a user namespace of its own: the
//! child is then also cloned into one, where it maps the gateway's uid and
//! gid to themselves. Spawns enter that user namespace first (which gives
//! them the capabilities to enter the mount namespace; the uid is not 0
//! there, so `execve` drops them again) and bubblewrap nests its own user
//! namespace inside it, mapping the same uid as before.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What every lean namespace holds besides the profiles' own sources:
/// bubblewrap's binary, libraries and loader cache, and the `/proc` and
/// `/dev` it reads and binds device nodes from.
const BASE: &[&str] = &["/usr", "/etc", "/proc", "/dev"];

/// The descriptors a spawn enters: the mount namespace and, when an
/// unprivileged gateway built it, the user namespace that owns it.
#[derive(Debug, Clone)]
pub(crate) struct NsFds {
    pub(crate) mnt: std::sync::Arc<OwnedFd>,
    pub(crate) user: Option<std::sync::Arc<OwnedFd>>,
}

/// The namespace, and which host paths it holds.
#[derive(Debug)]
pub(crate) struct LeanNs {
    pub(crate) fds: NsFds,
    /// The bound host paths (none nested in another).
    roots: Vec<PathBuf>,
    /// Mounts in the namespace when it was built.
    pub(crate) mounts: usize,
}

impl LeanNs {
    /// Whether `path` (absolute) is visible in the namespace at its host
    /// path.
    pub(crate) fn holds(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r))
    }

    /// The host paths it was built from.
    pub(crate) fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

/// Builds the namespace with `sources` (absolute host paths; missing ones
/// are skipped, as bubblewrap skips a missing `--ro-bind-try`) besides
/// [`BASE`], in a user namespace of its own unless the gateway is root.
pub(crate) fn build(sources: &[PathBuf]) -> io::Result<LeanNs> {
    builder::build(sources, crate::sys::geteuid() != 0)
}

/// [`build`] as an unprivileged gateway builds it, whoever runs it (in a
/// user namespace mapping the caller's uid and gid to themselves).
#[cfg(test)]
pub(crate) fn build_in_user_namespace(sources: &[PathBuf]) -> io::Result<LeanNs> {
    builder::build(sources, true)
}

/// The paths to bind: [`BASE`] and `sources`, sorted, without duplicates
/// and without any path below another one (bound recursively with it).
pub(crate) fn roots(sources: &[PathBuf]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = BASE
        .iter()
        .map(PathBuf::from)
        .chain(sources.iter().cloned())
        .filter(|p| p.is_absolute() && p != Path::new("/"))
        .collect();
    all.sort();
    all.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in all {
        // Sorted, so a parent comes before everything below it.
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    kept
}

/// A fresh staging directory on the host. It is only a mount point in the
/// namespace being built; on the host it stays an empty directory, removed
/// once the namespace is built. One directory per build: a directory
/// removed on the host while it is a mount point in another build's
/// namespace would detach that mount.
fn staging_dir() -> io::Result<PathBuf> {
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = std::env::temp_dir().join(format!("mcp-sandbox-lean-{}-{n}", std::process::id()));
    match fs::create_dir(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(staging)
}

/// One step of filling the staging tmpfs, prepared on the host before the
/// namespace exists, so that [`apply`] needs nothing but syscalls.
#[derive(Debug)]
enum Op {
    /// A directory (one that exists already is fine).
    Dir(CString),
    /// An empty file to bind a file onto.
    File(CString),
    /// A symlink (one that exists already is kept).
    Symlink { target: CString, link: CString },
    /// A recursive bind of a host path onto its place in the staging tree.
    Bind { src: CString, dst: CString },
}

impl Op {
    fn error(&self, errno: i32) -> io::Error {
        let e = io::Error::from_raw_os_error(errno);
        let (what, path) = match self {
            Op::Dir(p) => ("creating", p),
            Op::File(p) => ("creating", p),
            Op::Symlink { link, .. } => ("linking", link),
            Op::Bind { dst, .. } => ("mounting", dst),
        };
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.to_string_lossy()))
    }
}

/// What to create under `staging`: the host's top-level symlinks (merged
/// /usr: /bin -> usr/bin, and the loader's /lib64: bubblewrap itself is
/// executed through them), each root bound at its own path, and `/tmp`.
fn plan(staging: &Path, roots: &[PathBuf]) -> io::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for entry in fs::read_dir("/")? {
        let entry = entry?;
        if entry.file_type()?.is_symlink() {
            ops.push(Op::Symlink {
                target: cstr(&fs::read_link(entry.path())?)?,
                link: cstr(&staging.join(entry.file_name()))?,
            });
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    let mut dir = |ops: &mut Vec<Op>, d: &Path| -> io::Result<()> {
        // Every ancestor inside the staging tree, parents first.
        let mut chain: Vec<&Path> = d
            .ancestors()
            .take_while(|a| a.starts_with(staging) && *a != staging)
            .collect();
        chain.reverse();
        for a in chain {
            if dirs.insert(a.to_path_buf()) {
                ops.push(Op::Dir(cstr(a)?));
            }
        }
        Ok(())
    };
    for src in roots {
        let meta = match fs::symlink_metadata(src) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let Ok(rel) = src.strip_prefix("/") else {
            continue;
        };
        let dst = staging.join(rel);
        if let Some(parent) = dst.parent() {
            dir(&mut ops, parent)?;
        }
        if meta.is_symlink() {
            // The same link (top-level ones exist already); its target is
            // bound too (the profiles' plans list resolved host paths).
            ops.push(Op::Symlink {
                target: cstr(&fs::read_link(src)?)?,
                link: cstr(&dst)?,
            });
            continue;
        }
        if meta.is_dir() {
            dir(&mut ops, &dst)?;
        } else {
            ops.push(Op::File(cstr(&dst)?));
        }
        ops.push(Op::Bind {
            src: cstr(src)?,
            dst: cstr(&dst)?,
        });
    }
    // bubblewrap mounts its scratch tmpfs on /tmp before it pivots.
    dir(&mut ops, &staging.join("tmp"))?;
    Ok(ops)
}

/// Carries out one [`Op`] with plain syscalls (no allocation: it also runs
/// in the unprivileged builder's cloned child); `Err(errno)`.
fn apply(op: &Op) -> Result<(), i32> {
    // SAFETY: reads this thread's errno.
    let errno = || unsafe { *libc::__errno_location() };
    // SAFETY: plain syscalls on NUL-terminated strings owned by `op`.
    unsafe {
        match op {
            Op::Dir(p) => {
                if libc::mkdir(p.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                    return Err(errno());
                }
            }
            Op::File(p) => {
                let fd = libc::open(
                    p.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(errno());
                }
                libc::close(fd);
            }
            Op::Symlink { target, link } => {
                if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 && errno() != libc::EEXIST {
                    return Err(errno());
                }
            }
            Op::Bind { src, dst } => {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(errno());
                }
            }
        }
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

mod builder;
