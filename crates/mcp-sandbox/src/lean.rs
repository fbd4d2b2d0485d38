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
//! When the gateway runs as root, [`build`] prepares once a mount
//! namespace whose root is a small tmpfs holding only what sandboxes are
//! built from: bubblewrap and its libraries (`/usr`, `/etc`, the host's
//! top-level symlinks such as `/lib64 -> usr/lib64`), `/proc` and `/dev`,
//! every source a profile binds, the workspaces and files directories and
//! the egress forwarder, each bound recursively at its own path. Every
//! bubblewrap then starts inside it (the spawn's child `setns`es into it
//! before dropping root). The sandboxes are built by the same argv from
//! the same sources, so what a command sees does not change; only the
//! table bubblewrap copies and re-reads is smaller. The namespace is a
//! slave of the host's: mounts made later under a bound path still appear
//! in it, and nothing mounted in it appears on the host.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What every lean namespace holds besides the profiles' own sources:
/// bubblewrap's binary, libraries and loader cache, and the `/proc` and
/// `/dev` it reads and binds device nodes from.
const BASE: &[&str] = &["/usr", "/etc", "/proc", "/dev"];

/// The namespace, and which host paths it holds.
#[derive(Debug)]
pub(crate) struct LeanNs {
    pub(crate) fd: std::sync::Arc<OwnedFd>,
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
/// [`BASE`]. Runs on a scratch thread: `unshare(CLONE_NEWNS)` moves only
/// the calling thread, whose filesystem attributes it also unshares.
pub(crate) fn build(sources: &[PathBuf]) -> io::Result<LeanNs> {
    let sources = sources.to_vec();
    std::thread::Builder::new()
        .name("mcp-sandbox-lean-ns".to_owned())
        .spawn(move || build_here(&sources))?
        .join()
        .map_err(|_| io::Error::other("the lean namespace builder panicked"))?
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

fn build_here(sources: &[PathBuf]) -> io::Result<LeanNs> {
    let roots = roots(sources);
    // SAFETY: plain syscall; affects this thread only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // Host mounts still propagate in; nothing of ours propagates out.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )?;
    // The staging directory is only a mount point in this namespace; on
    // the host it stays an empty directory, removed below.
    // One directory per build: a directory removed on the host while it is
    // a mount point in another build's namespace would detach that mount.
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = std::env::temp_dir().join(format!("mcp-sandbox-lean-{}-{n}", std::process::id()));
    match fs::create_dir(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let built = populate(&staging, &roots);
    let ns = built.and_then(|()| {
        // SAFETY: opens a path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c"/proc/thread-self/ns/mnt".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        cvt(fd)?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Make the tmpfs the namespace's root: pivot_root(".", ".") stacks
        // the old root on top of the new one, which is then detached.
        let dir = cstr(&staging)?;
        // SAFETY: plain syscalls on C strings that live across them.
        unsafe {
            cvt(libc::chdir(dir.as_ptr()))?;
            cvt(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32)?;
            cvt(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            cvt(libc::chdir(c"/".as_ptr()))?;
        }
        let mounts = fs::read_to_string("/proc/thread-self/mountinfo")
            .map(|s| s.lines().count())
            .unwrap_or(0);
        Ok(LeanNs {
            fd: std::sync::Arc::new(fd),
            roots,
            mounts,
        })
    });
    // The host's view of the staging directory (this thread's root moved).
    let _ = fs::remove_dir(format!(
        "/proc/{}/root{}",
        std::process::id(),
        staging.display()
    ));
    ns
}

fn populate(staging: &Path, roots: &[PathBuf]) -> io::Result<()> {
    mount(
        Some(OsStr::new("tmpfs")),
        staging,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    // The host's top-level symlinks (merged /usr: /bin -> usr/bin, and the
    // loader's /lib64): bubblewrap itself is executed through them.
    for entry in fs::read_dir("/")? {
        let entry = entry?;
        if entry.file_type()?.is_symlink() {
            let target = fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(target, staging.join(entry.file_name()))?;
        }
    }
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
            fs::create_dir_all(parent)?;
        }
        if meta.is_symlink() {
            // The same link (top-level ones exist already); its target is
            // bound too (the profiles' plans list resolved host paths).
            if fs::symlink_metadata(&dst).is_err() {
                std::os::unix::fs::symlink(fs::read_link(src)?, &dst)?;
            }
            continue;
        }
        if meta.is_dir() {
            fs::create_dir_all(&dst)?;
        } else {
            fs::File::create(&dst)?;
        }
        mount(
            Some(src.as_os_str()),
            &dst,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
    }
    // bubblewrap mounts its scratch tmpfs on /tmp before it pivots.
    fs::create_dir_all(staging.join("tmp"))?;
    Ok(())
}

fn mount(
    source: Option<&OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let opt = |s: Option<&OsStr>| {
        s.map(|s| CString::new(s.as_bytes()))
            .transpose()
            .map_err(io::Error::other)
    };
    let (source, fstype, data) = (
        opt(source)?,
        opt(fstype.map(OsStr::new))?,
        opt(data.map(OsStr::new))?,
    );
    let target = cstr(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string (or null) that
    // lives across the call.
    cvt(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mounting {}: {e}", target.to_string_lossy()),
        )
    })
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn cvt(r: i32) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
