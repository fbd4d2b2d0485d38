//! The only module with `unsafe`: thin wrappers over the libc calls std does
//! not offer (euid, rlimits and cgroup placement in the forked child,
//! `waitid(WNOWAIT)`, `wait4` with rusage, killing a process group or a
//! pidfd, sealed memfds for the seccomp program, the landlock ABI probe).

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The effective uid of this process.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The effective gid of this process.
pub(crate) fn getegid() -> u32 {
    // SAFETY: getegid has no preconditions, cannot fail and touches no memory.
    unsafe { libc::getegid() }
}

/// Resource limits applied to bubblewrap (and so to everything it starts)
/// between fork and exec. Each value becomes both soft and hard limit, but
/// never above the hard limit the child already has, so lowering is the only
/// thing that can happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rlimits {
    pub(crate) address_space: u64,
    pub(crate) nproc: u64,
    pub(crate) nofile: u64,
    pub(crate) fsize: u64,
    pub(crate) cpu_secs: u64,
}

/// What the forked child does between fork and exec, besides what std
/// already does (uid/gid switch, process group).
#[derive(Debug)]
pub(crate) struct ChildSetup {
    pub(crate) limits: Rlimits,
    /// `cgroup.procs` (v2) or `tasks` (v1) files of the task's cgroup(s),
    /// opened by the gateway. The child writes `0` (itself) to each before
    /// exec, so bubblewrap and everything it starts is inside the task
    /// cgroup before it can fork.
    /// The kernel checks the opener's credentials, so this works after the
    /// switch to the unprivileged sandbox user.
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// Descriptors bubblewrap must inherit (the seccomp program); every
    /// other inherited descriptor above stderr is closed on exec.
    pub(crate) inherit: Vec<OwnedFd>,
}

/// Makes `cmd` join the task cgroups, apply `setup.limits` and mark every
/// inherited descriptor above stderr close-on-exec except `setup.inherit`,
/// so nothing the gateway has open leaks into the sandbox even if some
/// library forgot `O_CLOEXEC`.
///
/// It also binds the child's life to the spawning thread right away
/// (`PR_SET_PDEATHSIG`): bwrap's own `--die-with-parent` only takes effect
/// some milliseconds into its start, and a gateway dying in that window
/// would otherwise leave an orphaned sandbox running.
pub(crate) fn install_child_setup(cmd: &mut Command, setup: ChildSetup) {
    let parent = std::process::id();
    let limits = setup.limits;
    let hook = move || -> io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are plain syscalls
        // with integer arguments.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would
            // ever send the signal, so do not start at all.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        for fd in &setup.cgroup_procs {
            // SAFETY: writes one byte from a static buffer to a descriptor
            // the closure owns; write is async-signal-safe.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        lower_rlimits(&limits)?;
        mark_fds_cloexec();
        for fd in &setup.inherit {
            // SAFETY: fcntl(F_SETFD) on a descriptor the closure owns only
            // changes its close-on-exec flag.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child of a possibly multi-threaded
    // process, so it must be async-signal-safe: it only calls prctl,
    // getppid, write, getrlimit, setrlimit, close_range and fcntl (plain
    // syscalls), allocates nothing, takes no locks and only reads data
    // captured before the fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, want: u64) -> io::Result<()> {
    let mut cur = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `cur` is a valid, writable rlimit-sized buffer for the kernel to fill.
    if unsafe { libc::getrlimit(resource, cur.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrlimit returned 0, so it initialised `cur`.
    let cur = unsafe { cur.assume_init() };
    let value = want.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `new` is a valid rlimit that lives across the call.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mark_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on open
    // descriptors; it closes nothing, so std's exec-error pipe (already
    // close-on-exec) keeps working. Failure (kernel < 5.11) is harmless.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Blocks until child `pid` has exited, without reaping it: the pid (and so
/// its process group id) stays allocated until [`reap`].
pub(crate) fn wait_exited_nowait(pid: i32) -> io::Result<()> {
    loop {
        let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: `info` is a valid, writable siginfo_t buffer; P_PID with a
        // positive pid only concerns our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                info.as_mut_ptr(),
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What `wait4` reported for a reaped child.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub(crate) status: i32,
    pub(crate) cpu_ms: u64,
    pub(crate) max_rss_kb: u64,
    pub(crate) in_blocks: u64,
    pub(crate) out_blocks: u64,
}

/// Reaps child `pid`, returning its wait status and resource usage (which
/// includes every descendant it waited for).
pub(crate) fn reap(pid: i32) -> io::Result<Reaped> {
    loop {
        let mut status: libc::c_int = 0;
        let mut usage = MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `status` and `usage` are valid, writable buffers of the
        // right types; a positive pid only concerns our own child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if rc == pid {
            // SAFETY: wait4 succeeded, so it filled `usage` (and it was zeroed anyway).
            let u = unsafe { usage.assume_init() };
            let ms = |tv: libc::timeval| {
                u64::try_from(tv.tv_sec).unwrap_or(0) * 1000
                    + u64::try_from(tv.tv_usec).unwrap_or(0) / 1000
            };
            return Ok(Reaped {
                status,
                cpu_ms: ms(u.ru_utime) + ms(u.ru_stime),
                max_rss_kb: u64::try_from(u.ru_maxrss).unwrap_or(0),
                in_blocks: u64::try_from(u.ru_inblock).unwrap_or(0),
                out_blocks: u64::try_from(u.ru_oublock).unwrap_or(0),
            });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends SIGKILL to process group `pgid`. The caller guarantees the group
/// leader has not been reaped, so the id cannot have been reused.
pub(crate) fn kill_group(pgid: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid
    // addresses exactly the process group `pgid`, which we created.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// A sealed, read-only-content memfd holding `data`, positioned at its
/// start, close-on-exec (see [`ChildSetup::inherit`] to pass it on).
pub(crate) fn sealed_memfd(name: &CStr, data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(fd);
    file.write_all(data)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) with integer flags on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// An anonymous memfd to export data into (e.g. a BPF program from
/// libseccomp), close-on-exec.
pub(crate) fn scratch_memfd(name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A pidfd for `pid`, which pins it: signals sent through it can only
/// reach that process, even if the pid is reused afterwards.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel returned a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILLs the process behind `pidfd`. A process that is already gone is
/// not an error.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a descriptor we own, a signal number
    // and null siginfo (the kernel fills in a default).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// The landlock ABI version the kernel offers, without creating anything
/// (`LANDLOCK_CREATE_RULESET_VERSION`). `Err` carries the errno: ENOSYS
/// (not built) or EOPNOTSUPP (disabled at boot).
pub(crate) fn landlock_abi() -> io::Result<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attr, size 0 and the VERSION flag the kernel only
    // returns a number; no memory is read or written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(rc).map_err(|_| io::Error::other("landlock ABI out of range"))
}

/// Lowers this process's rlimits to `limits` (and RLIMIT_CORE to 0): each
/// becomes soft and hard limit, never above the hard limit already in
/// place. Used between fork and exec of bubblewrap and by the stub of a
/// pooled sandbox right before it executes the task's command; only plain
/// syscalls, so it is async-signal-safe.
pub(crate) fn lower_rlimits(limits: &Rlimits) -> io::Result<()> {
    set_limit(libc::RLIMIT_AS, limits.address_space)?;
    set_limit(libc::RLIMIT_NPROC, limits.nproc)?;
    set_limit(libc::RLIMIT_NOFILE, limits.nofile)?;
    set_limit(libc::RLIMIT_FSIZE, limits.fsize)?;
    set_limit(libc::RLIMIT_CPU, limits.cpu_secs)?;
    set_limit(libc::RLIMIT_CORE, 0)
}

/// This process's stdin as a Unix stream socket: the control channel of a
/// pooled sandbox's stub. Fails when stdin is anything else.
pub(crate) fn stdin_socket() -> io::Result<std::os::unix::net::UnixStream> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a valid, writable stat buffer; fd 0 is only inspected.
    if unsafe { libc::fstat(0, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled `st` (zeroed anyway).
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: fd 0 is open (fstat succeeded) and is a socket; the stub is
    // its only user (std's Stdin is never touched), so owning it is sound.
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(0) })
}

/// Whether child `pid` has exited (not reaped: the pid stays ours).
pub(crate) fn has_exited(pid: i32) -> io::Result<bool> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` is a valid, writable siginfo_t buffer; P_PID with a
    // positive pid only concerns our own child; WNOHANG never blocks.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded; with WNOHANG and no state change it leaves
    // the zeroed buffer, so si_pid is 0.
    Ok(unsafe { info.assume_init().si_pid() } != 0)
}
