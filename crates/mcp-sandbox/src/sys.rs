//! The only module with `unsafe`: thin wrappers over the libc calls std does
//! not offer (starting bubblewrap with `clone(CLONE_VM | CLONE_VFORK)`, or
//! `clone3` into its v2 cgroup, and its rlimits and cgroup placement in
//! the child,
//! `waitid(WNOWAIT)`, `wait4` with rusage, killing a process group or a
//! pidfd, sealed memfds for the seccomp program, the landlock ABI probe).

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

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
/// between clone and exec. Each value becomes both soft and hard limit, but
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

/// What the child does between clone and exec besides stdio, the uid/gid
/// switch and the process group (see [`Spawn`]).
#[derive(Debug)]
pub(crate) struct ChildSetup {
    pub(crate) limits: Rlimits,
    /// How the child enters the task's cgroup(s), before bubblewrap can
    /// fork.
    pub(crate) cgroup: CgroupJoin,
    /// Descriptors bubblewrap must inherit (the seccomp program); every
    /// other inherited descriptor above stderr is closed on exec.
    pub(crate) inherit: Vec<OwnedFd>,
}

/// How a spawned child enters its task cgroup(s).
#[derive(Debug, Default)]
pub(crate) enum CgroupJoin {
    /// It stays in the gateway's.
    #[default]
    None,
    /// It writes `0` (itself) to each of these files before exec: v1
    /// `tasks`, which moves only the calling thread (the child is
    /// single-threaded) and so skips the kernel's global threadgroup lock;
    /// or a v2 `cgroup.procs` where [`CgroupJoin::Into`] cannot be used.
    /// The kernel checks the opener's credentials, so this works after the
    /// switch to the unprivileged sandbox user.
    Write(Vec<OwnedFd>),
    /// It is cloned into this v2 cgroup directory (`clone3` with
    /// `CLONE_INTO_CGROUP`, Linux 5.7): inside from its first instruction,
    /// with no migration at all. A v2 domain cgroup only takes whole
    /// processes (`cgroup.procs`), whose migration takes that global lock
    /// and waits for an RCU grace period unless another write came just
    /// before: 15.5-16 ms p50 per spawn at 20 ms intervals on the
    /// reference VM, against 1.3-1.4 ms cloned into the cgroup
    /// (docs/PERFORMANCE.md). Where `clone3` or the flag is missing (older
    /// kernels, architectures other than x86_64) the child writes the
    /// directory's `cgroup.procs` instead, as [`CgroupJoin::Write`].
    Into(OwnedFd),
}

/// How to start bubblewrap: an empty environment, `/` as working
/// directory, `stdin` (or `/dev/null`), stdout and stderr piped, optionally
/// another uid/gid (supplementary groups dropped), a new process group, and
/// then everything in [`ChildSetup`]: join the task cgroups, lower the
/// rlimits, mark every inherited descriptor above stderr close-on-exec
/// except `setup.inherit`, so nothing the gateway has open leaks into the
/// sandbox even if some library forgot `O_CLOEXEC`.
///
/// The child is bound to the spawning thread right away
/// (`PR_SET_PDEATHSIG`): bwrap's own `--die-with-parent` only takes effect
/// some milliseconds into its start, and a gateway dying in that window
/// would otherwise leave an orphaned sandbox running.
///
/// [`Spawn::spawn`] starts the child the way `posix_spawn` does, with
/// `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the gateway's memory
/// until it executes bwrap, instead of a `fork` that copies the page tables
/// of a large multi-threaded process and leaves copy-on-write faults behind
/// in every thread (7-10 % of the CPU at saturation; docs/PERFORMANCE.md).
#[derive(Debug)]
pub(crate) struct Spawn {
    program: CString,
    /// argv, `program` first.
    args: Vec<CString>,
    /// The child's stdin; `None` is `/dev/null`.
    pub(crate) stdin: Option<OwnedFd>,
    /// uid and gid to switch to.
    pub(crate) owner: Option<(u32, u32)>,
    /// The mount namespace bwrap starts in (`crate::lean`); `None` is the
    /// gateway's own. Entering one needs root (before the uid switch).
    pub(crate) mnt_ns: Option<std::sync::Arc<OwnedFd>>,
    /// The user namespace owning `mnt_ns`, entered first, when an
    /// unprivileged gateway built it (see `crate::lean`).
    pub(crate) user_ns: Option<std::sync::Arc<OwnedFd>>,
    pub(crate) setup: ChildSetup,
}

/// A started child: its pid (the caller's to reap) and its output pipes.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// The steps of the child, to say which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    None = 0,
    Stdio,
    UserNamespace,
    MountNamespace,
    Ids,
    Chdir,
    ProcessGroup,
    DeathSignal,
    ParentGone,
    Cgroup,
    Rlimits,
    Inherit,
    Exec,
}

impl Step {
    fn from_u32(v: u32) -> Self {
        [
            Self::Stdio,
            Self::UserNamespace,
            Self::MountNamespace,
            Self::Ids,
            Self::Chdir,
            Self::ProcessGroup,
            Self::DeathSignal,
            Self::ParentGone,
            Self::Cgroup,
            Self::Rlimits,
            Self::Inherit,
            Self::Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
        .unwrap_or(Self::None)
    }

    fn what(self) -> &'static str {
        match self {
            Self::None => "starting the sandbox",
            Self::Stdio => "connecting the sandbox's stdio",
            Self::UserNamespace => "entering the lean namespace's user namespace",
            Self::MountNamespace => "entering the lean mount namespace",
            Self::Ids => "switching to the sandbox user",
            Self::Chdir => "changing to /",
            Self::ProcessGroup => "creating the sandbox's process group",
            Self::DeathSignal => "binding the sandbox to the gateway's life",
            Self::ParentGone => "starting the sandbox: the gateway is exiting",
            Self::Cgroup => "joining the task cgroup",
            Self::Rlimits => "lowering the sandbox's rlimits",
            Self::Inherit => "passing descriptors to bubblewrap",
            Self::Exec => "executing bubblewrap",
        }
    }
}

/// Everything the child reads, prepared by the parent before `clone`: the
/// child allocates nothing, takes no lock and calls only plain syscalls.
/// It shares the parent's memory, so it reports a failure here.
struct ChildCtx {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    /// The mount namespace to start bwrap in, or -1 for the gateway's.
    mnt_ns: RawFd,
    /// The user namespace to enter before it, or -1.
    user_ns: RawFd,
    owner: Option<(u32, u32)>,
    drop_groups: bool,
    parent: u32,
    cgroup_procs: *const RawFd,
    cgroup_procs_len: usize,
    inherit: *const RawFd,
    inherit_len: usize,
    limits: Rlimits,
    failed: AtomicU32,
    errno: AtomicI32,
}

/// Children started by [`Spawn::spawn`] and not yet reaped by [`reap`]:
/// their owners wait for them, [`reap_orphans`] never touches them.
static OWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// Held for reading from before a clone until its pid is in [`OWNED`], and
/// for writing while [`reap_orphans`] looks: a child that exits before its
/// pid is recorded is never mistaken for an orphan.
static SPAWNING: RwLock<()> = RwLock::new(());

/// Size of the child's stack (it runs a few syscalls, then `execve`).
const CHILD_STACK: usize = 64 * 1024;
/// Highest signal number plus one (`_NSIG` on Linux).
const NSIG: libc::c_int = 65;

impl Spawn {
    /// `program` with `args` (without argv[0]); fails on a NUL byte.
    pub(crate) fn new<I, S>(
        program: &std::path::Path,
        args: I,
        setup: ChildSetup,
    ) -> io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let c = |s: &std::ffi::OsStr| {
            CString::new(s.as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in an argument"))
        };
        let program = c(program.as_os_str())?;
        let mut all = vec![program.clone()];
        for a in args {
            all.push(c(a.as_ref())?);
        }
        Ok(Self {
            program,
            args: all,
            stdin: None,
            owner: None,
            mnt_ns: None,
            user_ns: None,
            setup,
        })
    }

    /// Starts the child and returns once it executed bubblewrap (or
    /// failed to, which is the error). Blocks the calling thread for that
    /// long; the child's death signal is bound to this thread.
    pub(crate) fn spawn(self) -> io::Result<Spawned> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdin = match self.stdin {
            Some(fd) => fd,
            None => OwnedFd::from(File::open("/dev/null")?),
        };
        let argv: Vec<*const libc::c_char> = self
            .args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // The v2 task cgroup the child is cloned into; where clone3 cannot
        // do that, its `cgroup.procs`, which the child writes itself into.
        // (Closed when this returns, like the setup's own descriptors.)
        let mut fallback = None;
        let (into, cgroup_procs): (Option<RawFd>, Vec<RawFd>) = match &self.setup.cgroup {
            CgroupJoin::None => (None, Vec::new()),
            CgroupJoin::Write(files) => (None, files.iter().map(AsRawFd::as_raw_fd).collect()),
            CgroupJoin::Into(dir) if clone_into_cgroup_works(dir) => {
                (Some(dir.as_raw_fd()), Vec::new())
            }
            CgroupJoin::Into(dir) => {
                let procs = fallback.insert(procs_file_of(dir)?);
                (None, vec![procs.as_raw_fd()])
            }
        };
        let inherit: Vec<RawFd> = self.setup.inherit.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        let ctx = ChildCtx {
            program: self.program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            stdio: [stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            mnt_ns: self.mnt_ns.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            user_ns: self.user_ns.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            owner: self.owner,
            drop_groups: root,
            parent: std::process::id(),
            cgroup_procs: cgroup_procs.as_ptr(),
            cgroup_procs_len: cgroup_procs.len(),
            inherit: inherit.as_ptr(),
            inherit_len: inherit.len(),
            limits: self.setup.limits,
            failed: AtomicU32::new(Step::None as u32),
            errno: AtomicI32::new(0),
        };
        // SAFETY: `child_main` only makes plain syscalls, then executes or
        // exits; `ctx` lives on this frame, and everything it points to
        // (argv, envp, fd lists, C strings) with it, until the clone
        // returned (CLONE_VFORK). It resets the signal handlers before it
        // unblocks signals.
        let pid = unsafe {
            clone_vfork(
                0,
                into,
                child_main,
                std::ptr::from_ref(&ctx).cast_mut().cast(),
            )
        }
        .map_err(|e| match into {
            // The kernel refused the cgroup (gone, not v2, no permission).
            Some(_) => io::Error::new(e.kind(), format!("{}: {e}", Step::Cgroup.what())),
            None => e,
        })?;
        let failed = Step::from_u32(ctx.failed.load(Ordering::Acquire));
        if failed != Step::None {
            let errno = ctx.errno.load(Ordering::Acquire);
            // The child has exited (`_exit` after the failed step): reap it.
            let _ = reap(pid);
            let os = io::Error::from_raw_os_error(errno);
            return Err(if failed == Step::Exec {
                os
            } else {
                io::Error::new(os.kind(), format!("{}: {os}", failed.what()))
            });
        }
        // Our copies of the child's ends (and of stdin, the cgroup files and
        // the inherited descriptors) close here.
        drop((out_w, err_w, stdin, self.setup, self.mnt_ns, self.user_ns));
        Ok(Spawned {
            pid,
            stdout: out_r,
            stderr: err_r,
        })
    }
}

/// Runs `child(arg)` in a child cloned with `CLONE_VM | CLONE_VFORK` and
/// `flags` (namespaces to create, `CLONE_FILES`), and reaps it; answers its
/// exit code. The calling thread is suspended until the child exits.
///
/// # Safety
///
/// As for [`clone_vfork`]; `child` must end with `_exit`.
pub(crate) unsafe fn run_cloned(
    flags: libc::c_int,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<i32> {
    // SAFETY: the caller's contract.
    let pid = unsafe { clone_vfork(flags, None, child, arg) }?;
    let reaped = reap(pid)?;
    Ok(if libc::WIFEXITED(reaped.status) {
        libc::WEXITSTATUS(reaped.status)
    } else {
        -1
    })
}

/// Clones a child with `CLONE_VM | CLONE_VFORK | SIGCHLD` and `flags` that
/// runs `child(arg)` on a stack of its own, and records it in [`OWNED`]
/// (its caller reaps it); answers its pid once it executed or exited. With
/// `into`, a v2 cgroup directory, the child is created inside it (`clone3`
/// with `CLONE_INTO_CGROUP`; the caller checked
/// [`clone_into_cgroup_works`]). No signal handler of this process may run
/// in the child, which shares its memory: every signal is blocked around
/// the clone.
///
/// # Safety
///
/// `child` runs in a process that shares this one's memory while every
/// other thread of it may hold locks: it may only make plain syscalls (no
/// allocation, no locks, no panics) on data `arg` points to, which must
/// stay valid until this returns, and must end with `execve` or `_exit`;
/// it must not unblock signals before resetting their handlers.
unsafe fn clone_vfork(
    flags: libc::c_int,
    into: Option<RawFd>,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<i32> {
    let stack = Stack::new(CHILD_STACK)?;
    let spawning = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`, pthread_sigmask saves the mask
    // into `old` and restores it; the caller vouches for `child` and `arg`,
    // and `stack` outlives the child (CLONE_VFORK suspends this thread
    // until the child executed or exited).
    let pid = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        let cloned = match into {
            Some(dir) => clone3_into(flags, dir, &stack, child, arg),
            None => {
                let pid = libc::clone(
                    child,
                    stack.top(),
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | flags,
                    arg,
                );
                if pid < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(pid)
                }
            }
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
        cloned?
    };
    OWNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(pid);
    drop(spawning);
    drop(stack);
    Ok(pid)
}

/// `CLONE_INTO_CGROUP` (linux/sched.h; the libc crate's constant is a
/// 32-bit `c_int` on this target).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of linux/sched.h up to `cgroup` (its size is
/// `CLONE_ARGS_SIZE_VER2`, which kernels before 5.7 refuse with `E2BIG`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Whether [`clone3_into`] places children in a cgroup here: 0 not known
/// yet, 1 yes, 2 no (no `clone3`, a kernel before 5.7 that does not know
/// `CLONE_INTO_CGROUP`, or not x86_64).
static CLONE_INTO_CGROUP_STATE: AtomicU8 = AtomicU8::new(0);

/// Whether children can be cloned into a cgroup, found out once by cloning
/// a child that exits at once into `dir`. A probe failing for another
/// reason (the directory is gone, permissions) decides nothing: the spawn
/// then fails with that error.
fn clone_into_cgroup_works(dir: &OwnedFd) -> bool {
    match CLONE_INTO_CGROUP_STATE.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    extern "C" fn exit_at_once(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: the child only calls _exit.
    match unsafe { clone_vfork(0, Some(dir.as_raw_fd()), exit_at_once, std::ptr::null_mut()) } {
        Ok(pid) => {
            let _ = reap(pid);
            CLONE_INTO_CGROUP_STATE.store(1, Ordering::Relaxed);
            true
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
            ) =>
        {
            CLONE_INTO_CGROUP_STATE.store(2, Ordering::Relaxed);
            tracing::info!(
                error = %e,
                "this kernel cannot clone into a cgroup; sandboxes join theirs through cgroup.procs"
            );
            false
        }
        Err(_) => true,
    }
}

/// `cgroup.procs` of the cgroup directory `dir`, for writing.
pub(crate) fn procs_file_of(dir: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: openat on a directory descriptor we borrow, with a constant
    // relative name; the result is a fresh descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP | flags)` running
/// `child(arg)` on `stack`: glibc has no `clone3` wrapper, and a child
/// sharing this memory must start on a stack of its own, so the syscall
/// and the child's first call are one block of assembly. `ENOSYS`,
/// `E2BIG` or `EINVAL` mean a kernel before 5.7 (see
/// [`clone_into_cgroup_works`]).
///
/// # Safety
///
/// As for [`clone_vfork`], with every signal blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into(
    flags: libc::c_int,
    dir: RawFd,
    stack: &Stack,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<i32> {
    let mut args = CloneArgs {
        // Namespace flags are positive c_ints.
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | flags) as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        cgroup: dir as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: the clone3 syscall with a valid clone_args of the size
    // passed. The parent continues after `syscall` with the pid (or
    // -errno) in rax and its own registers and stack untouched (rcx and
    // r11 are clobbered by `syscall`). The child, with rax = 0, starts at
    // the same place with the stack pointer at the top of `stack`
    // (16-byte aligned, so the call below keeps the ABI's alignment),
    // calls `child(arg)` from r12/r13 (preserved by the kernel), and
    // exits with its return value should it ever return (it ends with
    // execve or _exit). Nothing of the parent's stack is touched by the
    // child, and the parent is suspended (CLONE_VFORK) until the child
    // executed or exited.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") std::ptr::from_mut(&mut args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") child,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(
            i32::try_from(-ret).unwrap_or(libc::EINVAL),
        ));
    }
    i32::try_from(ret).map_err(|_| io::Error::other("clone3 returned an out-of-range pid"))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_into(
    _flags: libc::c_int,
    _dir: RawFd,
    _stack: &Stack,
    _child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// An mmapped stack for the clone child, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new(size: usize) -> io::Result<Self> {
        const GUARD: usize = 4096;
        let len = size + GUARD;
        // SAFETY: an anonymous private mapping of `len` bytes at an address
        // of the kernel's choosing; nothing else is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping we just created.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack's highest address (stacks grow down); page-aligned.
    fn top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; the child no
        // longer runs on it (it executed or exited before clone returned).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// A pipe, both ends close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The clone child: applies the setup and executes bubblewrap; on failure
/// records the step and errno in the shared context and exits 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildCtx` of the suspended parent frame (see
    // `Spawn::spawn`), valid and unchanged until this child executes or exits.
    let ctx = unsafe { &*arg.cast::<ChildCtx>() };
    // SAFETY: the child runs on its own stack in the parent's memory; the
    // steps only make plain syscalls with data prepared by the parent.
    let step = unsafe { child_steps(ctx) };
    ctx.errno.store(
        io::Error::last_os_error().raw_os_error().unwrap_or(0),
        Ordering::Release,
    );
    ctx.failed.store(step as u32, Ordering::Release);
    // SAFETY: ends the child without running anything of the parent's
    // (no atexit handlers, no flushing of shared stdio buffers).
    unsafe { libc::_exit(127) }
}

/// What the child does between clone and exec. Returns only on failure,
/// with the failed step (errno is still the failure's). Plain syscalls
/// only: this runs in the parent's memory, so no allocation, no lock and
/// no libc call with process-wide side effects (glibc's `setuid` would
/// signal the parent's threads; the raw syscalls change this child only).
unsafe fn child_steps(ctx: &ChildCtx) -> Step {
    // SAFETY (whole function): every pointer comes from the parent's
    // `ChildCtx`, valid for this child's life; every call is a syscall on
    // integers or on those buffers.
    unsafe {
        // Handlers of the gateway would run on its memory: back to the
        // default for every handled signal, and SIGPIPE, which the Rust
        // runtime ignores, too (as std does for its children).
        for sig in 1..NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE
                || (old.sa_sigaction != libc::SIG_IGN && old.sa_sigaction != libc::SIG_DFL)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        for (target, fd) in (0..).zip(ctx.stdio) {
            // The parent's descriptors are all above stderr, so dup2 makes
            // a new, inheritable one.
            if libc::dup2(fd, target) != target {
                return Step::Stdio;
            }
        }
        // The child has its own filesystem attributes (no CLONE_FS), so it
        // may enter another mount namespace; root and cwd become its root.
        // An unprivileged gateway's lean namespace belongs to a user
        // namespace of its own (same ids, mapped to themselves): entering
        // it gives the capabilities the mount namespace needs, and execve
        // drops them again (the uid is not 0 there).
        if ctx.user_ns >= 0 && libc::setns(ctx.user_ns, libc::CLONE_NEWUSER) != 0 {
            return Step::UserNamespace;
        }
        if ctx.mnt_ns >= 0 && libc::setns(ctx.mnt_ns, libc::CLONE_NEWNS) != 0 {
            return Step::MountNamespace;
        }
        if let Some((uid, gid)) = ctx.owner {
            if ctx.drop_groups
                && libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
            {
                return Step::Ids;
            }
            if libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                return Step::Ids;
            }
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Step::Chdir;
        }
        if libc::setpgid(0, 0) != 0 {
            return Step::ProcessGroup;
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Step::DeathSignal;
        }
        // The parent may have died before the prctl: then nobody would
        // ever send the signal, so do not start at all.
        if libc::getppid() as u32 != ctx.parent {
            *libc::__errno_location() = libc::ESRCH;
            return Step::ParentGone;
        }
        for i in 0..ctx.cgroup_procs_len {
            let fd = *ctx.cgroup_procs.add(i);
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Step::Cgroup;
            }
        }
        if lower_rlimits(&ctx.limits).is_err() {
            return Step::Rlimits;
        }
        mark_fds_cloexec();
        for i in 0..ctx.inherit_len {
            let fd = *ctx.inherit.add(i);
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Step::Inherit;
            }
        }
        let mut none = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
        libc::execve(ctx.program, ctx.argv, ctx.envp);
        Step::Exec
    }
}

impl ChildSetup {
    /// No cgroup, no inherited descriptor, rlimits as they are.
    pub(crate) fn none() -> Self {
        Self {
            limits: Rlimits {
                address_space: u64::MAX,
                nproc: u64::MAX,
                nofile: u64::MAX,
                fsize: u64::MAX,
                cpu_secs: u64::MAX,
            },
            cgroup: CgroupJoin::None,
            inherit: Vec::new(),
        }
    }
}

/// Runs `spawn` to its end from the calling thread: its exit status,
/// stdout and stderr.
pub(crate) fn output(spawn: Spawn) -> io::Result<std::process::Output> {
    use std::os::unix::process::ExitStatusExt;
    let child = spawn.spawn()?;
    let read = read_both(child.stdout, child.stderr);
    let reaped = reap(child.pid)?;
    let (stdout, stderr) = read?;
    Ok(std::process::Output {
        status: std::process::ExitStatus::from_raw(reaped.status),
        stdout,
        stderr,
    })
}

/// Reads `out` and `err` to their ends at the same time (so a child never
/// blocks on a full pipe), e.g. for a child's stdout and stderr.
pub(crate) fn read_both(out: OwnedFd, err: OwnedFd) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut files = [Some(File::from(out)), Some(File::from(err))];
    let mut got = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds: Vec<libc::pollfd> = files
            .iter()
            .flatten()
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            return Ok(got);
        }
        let n = libc::nfds_t::try_from(fds.len()).unwrap_or(2);
        // SAFETY: `fds` is a valid, writable array of `n` pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), n, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (slot, sink) in files.iter_mut().zip([&mut got.0, &mut got.1]) {
            let Some(f) = slot else { continue };
            let ready = fds.iter().any(|p| p.fd == f.as_raw_fd() && p.revents != 0);
            if !ready {
                continue;
            }
            match std::io::Read::read(f, &mut buf) {
                Ok(0) => *slot = None,
                Ok(k) => sink.extend_from_slice(buf.get(..k).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
    peek_exited(pid, 0).map(drop)
}

/// Whether child `pid` has exited (not reaped: the pid stays ours).
pub(crate) fn has_exited(pid: i32) -> io::Result<bool> {
    peek_exited(pid, libc::WNOHANG)
}

/// `waitid(P_PID, pid, WEXITED | WNOWAIT | flags)`, retried on `EINTR`:
/// whether child `pid` has exited, leaving it unreaped. Without `WNOHANG`
/// it blocks until it has.
fn peek_exited(pid: i32, flags: libc::c_int) -> io::Result<bool> {
    loop {
        let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: `info` is a valid, writable siginfo_t buffer; P_PID with a
        // positive pid only concerns our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                info.as_mut_ptr(),
                libc::WEXITED | libc::WNOWAIT | flags,
            )
        };
        if rc == 0 {
            // SAFETY: waitid succeeded; with WNOHANG and no state change it
            // leaves the zeroed buffer, so si_pid is 0.
            return Ok(unsafe { info.assume_init().si_pid() } != 0);
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
            OWNED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
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

/// The gate of a sandbox whose command waits for its approval to be
/// stored: `(writer, reader)`, both close-on-exec. The reader goes to
/// bubblewrap as `--block-fd`, which it reads after the whole namespace
/// and mount setup, right before it loads the seccomp filter and executes
/// the command; one byte on the writer releases it.
///
/// The reader is the pipe reopened read-write through `/proc/self/fd`, so
/// it counts as a writer itself and its read never ends with end-of-file:
/// a writer that is closed or lost (a gateway that crashed while the
/// approval was being stored) leaves bubblewrap blocked until it is killed
/// (its parent-death signal), never running the command. bubblewrap closes
/// the reader before the exec, so the command does not inherit it.
pub(crate) fn gate_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors nobody else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let path = CString::new(format!("/proc/self/fd/{}", read.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path and integer flags.
    let both = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if both < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a fresh descriptor nobody else owns.
    let both = unsafe { OwnedFd::from_raw_fd(both) };
    drop(read);
    Ok((write, both))
}

/// Releases a sandbox held by [`gate_pipe`]'s reader.
pub(crate) fn open_gate(writer: &OwnedFd) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor we own.
    let n = unsafe { libc::write(writer.as_raw_fd(), b"1".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

/// Waits until one of the processes behind `pidfds` has exited (a pidfd
/// turns readable once its process is a zombie, after it left its
/// cgroups), or `timeout` passed. Interrupted waits end early; the caller
/// looks again either way.
pub(crate) fn wait_any_exited(pidfds: &[OwnedFd], timeout: Duration) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> = pidfds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let n = libc::nfds_t::try_from(fds.len()).map_err(|_| io::Error::other("too many pidfds"))?;
    let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of `n` pollfds we own for the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), n, ms) } < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
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
/// place. Used between clone and exec of bubblewrap and by the stub of a
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

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`): a sandbox's pid-namespace init (bwrap)
/// outlives the bwrap we started by a moment, and would otherwise be
/// reparented to PID 1, which in a container is the gateway itself or an
/// init that may never reap it.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only changes a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps exited children that no [`Spawn`] owner waits for and that are
/// bubblewrap (the orphaned pid-namespace inits [`become_subreaper`] adopts).
/// Returns how many it reaped.
pub(crate) fn reap_orphans() -> usize {
    let _no_spawns = SPAWNING.write().unwrap_or_else(PoisonError::into_inner);
    let owned = OWNED.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut reaped = 0;
    for pid in children() {
        if owned.contains(&pid) || !is_bwrap_zombie(pid) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on a child of ours that has exited (checked just
        // above, and nobody else reaps unowned children); WNOHANG never blocks.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            reaped += 1;
        }
    }
    ORPHANS_REAPED.fetch_add(reaped as u64, Ordering::Relaxed);
    reaped
}

/// Orphans [`reap_orphans`] reaped since the process started.
pub(crate) static ORPHANS_REAPED: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Pids of this process's children (every thread's `children` list).
fn children() -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// Whether `pid` is a zombie named `bwrap` (`/proc/<pid>/stat`).
fn is_bwrap_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((head, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    head.ends_with("(bwrap") && rest.starts_with('Z')
}

#[cfg(test)]
mod tests;
