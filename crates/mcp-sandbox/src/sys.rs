//! The only module with `unsafe`: thin wrappers over the libc calls std does
//! not offer (euid, rlimits in the forked child, `waitid(WNOWAIT)`, `wait4`
//! with rusage, killing a process group).

use std::io;
use std::mem::MaybeUninit;
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

/// Makes `cmd` apply `limits` in the child and mark every inherited
/// descriptor above stderr close-on-exec, so nothing the gateway has open
/// leaks into the sandbox even if some library forgot `O_CLOEXEC`.
///
/// It also binds the child's life to the spawning thread right away
/// (`PR_SET_PDEATHSIG`): bwrap's own `--die-with-parent` only takes effect
/// some milliseconds into its start, and a gateway dying in that window
/// would otherwise leave an orphaned sandbox running.
pub(crate) fn install_child_setup(cmd: &mut Command, limits: Rlimits) {
    let parent = std::process::id();
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
        set_limit(libc::RLIMIT_AS, limits.address_space)?;
        set_limit(libc::RLIMIT_NPROC, limits.nproc)?;
        set_limit(libc::RLIMIT_NOFILE, limits.nofile)?;
        set_limit(libc::RLIMIT_FSIZE, limits.fsize)?;
        set_limit(libc::RLIMIT_CPU, limits.cpu_secs)?;
        set_limit(libc::RLIMIT_CORE, 0)?;
        mark_fds_cloexec();
        Ok(())
    };
    // SAFETY: the hook runs in the forked child of a possibly multi-threaded
    // process, so it must be async-signal-safe: it only calls prctl,
    // getppid, getrlimit, setrlimit and close_range (plain syscalls),
    // allocates nothing, takes no locks and only reads copied integers.
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
