//! The seccomp filter every sandboxed command runs under, built with
//! libseccomp and handed to bubblewrap as a BPF program (`--seccomp FD`).
//!
//! It is a default-deny allowlist for the host's native ABI:
//! - a syscall that is not listed fails with `ENOSYS`, the answer a program
//!   already handles for a syscall its kernel lacks (glibc falls back);
//! - the privileged and risky interfaces of [`DENY_EPERM`] fail with
//!   `EPERM`, as does anything a profile's `[seccomp] deny` adds;
//! - `clone3` fails with `ENOSYS`: its flags live in memory seccomp cannot
//!   read, and libc falls back to `clone`, whose flags it can;
//! - argument filters: `ioctl` `TIOCSTI`/`TIOCLINUX`/`TIOCSETD` (compared on
//!   the low 32 bits, as the kernel reads `cmd`), namespace flags of
//!   `clone`/`unshare`, `personality` other than a query, and socket
//!   families: `AF_UNIX`, `AF_NETLINK` with `NETLINK_ROUTE` only, and
//!   `AF_INET`/`AF_INET6` (stream and datagram only) when the run may use
//!   the network; every other family fails with `EAFNOSUPPORT`, raw and
//!   packet types with `EPERM`;
//! - other ABIs (x32, i386 through `int 0x80`) kill the process.
//!
//! libseccomp lets an unconditional rule win over conditional ones of the
//! same syscall, so every argument-filtered syscall gets only conditional
//! rules that together cover all values ([`complement`]).

use std::ffi::CStr;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use libseccomp::{
    ScmpAction, ScmpArgCompare as Cmp, ScmpCompareOp as Op, ScmpFilterContext, ScmpSyscall,
};

use crate::sys;

/// Syscalls every sandboxed command may make (names of the native ABI;
/// names this architecture or libseccomp does not know are skipped).
pub(crate) const ALLOW: &[&str] = &[
    // files and directories
    "access",
    "chdir",
    "chmod",
    "chown",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "name_to_handle_at",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "setxattr",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    // memory
    "brk",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    "get_mempolicy",
    // processes, threads, signals
    "arch_prctl",
    "capget",
    "capset",
    "exit",
    "exit_group",
    "execve",
    "execveat",
    "fork",
    "vfork",
    "futex",
    "futex_waitv",
    "get_robust_list",
    "set_robust_list",
    "get_thread_area",
    "set_thread_area",
    "set_tid_address",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "getpgrp",
    "getsid",
    "setpgid",
    "setsid",
    "getpriority",
    "setpriority",
    "ioprio_get",
    "ioprio_set",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "getrusage",
    "kill",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "rseq",
    "restart_syscall",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "pause",
    "wait4",
    "waitid",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getattr",
    "sched_setattr",
    "sched_getparam",
    "sched_setparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_rr_get_interval",
    "sched_yield",
    "seccomp",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    // identity (inside the sandbox's own user namespace, without capabilities)
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    // time
    "alarm",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "gettimeofday",
    "nanosleep",
    "time",
    "times",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "adjtimex",
    // events and pipes
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "pselect6",
    "select",
    // legacy AIO (io_uring is denied)
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_cancel",
    "io_getevents",
    "io_pgetevents",
    // sockets (socket and socketpair have argument filters)
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    // System V and POSIX IPC (private to the sandbox's IPC namespace)
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    // system information
    "getcpu",
    "getrandom",
    "sysinfo",
    "uname",
];

/// Syscalls that fail with `EPERM`: mounts and namespaces, tracing and
/// other processes' memory, kernel keyrings, eBPF, perf, userfaultfd,
/// io_uring, kexec and modules, reboot and swap, file handles, host clock
/// and identity, raw I/O ports, accounting and quotas.
pub(crate) const DENY_EPERM: &[&str] = &[
    "mount",
    "umount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "chroot",
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "process_mrelease",
    "kcmp",
    "pidfd_getfd",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "reboot",
    "swapon",
    "swapoff",
    "open_by_handle_at",
    "quotactl",
    "quotactl_fd",
    "acct",
    "syslog",
    "lookup_dcookie",
    "fanotify_init",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "modify_ldt",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "migrate_pages",
    "move_pages",
    "vm86",
    "vm86old",
];

/// `ioctl` requests that fail with `EPERM`: pushing input into a terminal
/// (`TIOCSTI`), the Linux console's multiplexer (`TIOCLINUX`) and changing
/// a terminal's line discipline (`TIOCSETD`, a classic kernel attack
/// surface).
pub(crate) const DENIED_IOCTLS: [u32; 3] = [0x5412, 0x541C, 0x5423];

/// Namespace flags `clone` and `unshare` may not carry.
const NS_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// Socket families are small integers; anything at or above this is refused.
const FAMILY_LIMIT: u64 = 64;
const LOW32: u64 = 0xffff_ffff;
const SOCK_TYPE_MASK: u64 = 0xf;

/// Which socket families a run may open besides `AF_UNIX` and route
/// netlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Families {
    UnixOnly,
    WithInet,
}

/// The compiled filters of one profile, one per [`Families`].
#[derive(Debug, Clone)]
pub(crate) struct ProfileFilters {
    unix_only: Arc<[u8]>,
    with_inet: Arc<[u8]>,
}

impl ProfileFilters {
    /// Compiles both variants of the filter with the profile's extra denials.
    pub(crate) fn build(extra_deny: &[String]) -> Result<ProfileFilters, String> {
        Ok(ProfileFilters {
            unix_only: build(Families::UnixOnly, extra_deny)?.into(),
            with_inet: build(Families::WithInet, extra_deny)?.into(),
        })
    }

    pub(crate) fn get(&self, families: Families) -> &[u8] {
        match families {
            Families::UnixOnly => &self.unix_only,
            Families::WithInet => &self.with_inet,
        }
    }
}

/// Whether libseccomp knows `name` as a syscall of this architecture.
pub(crate) fn is_known_syscall(name: &str) -> bool {
    ScmpSyscall::from_name(name).is_ok()
}

/// The libseccomp library version in use, e.g. `2.5.4`.
pub(crate) fn libseccomp_version() -> String {
    match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Builds the filter and exports it as a BPF program.
pub(crate) fn build(families: Families, extra_deny: &[String]) -> Result<Vec<u8>, String> {
    let err = |what: &str, e: libseccomp::error::SeccompError| format!("seccomp: {what}: {e}");
    let mut f = ScmpFilterContext::new(ScmpAction::Errno(libc::ENOSYS))
        .map_err(|e| err("cannot create filter", e))?;
    f.set_act_badarch(ScmpAction::KillProcess)
        .map_err(|e| err("bad-arch action", e))?;
    // A binary tree instead of a linear list of syscall checks: the filter
    // runs on every syscall.
    if let Err(e) = f.set_ctl_optimize(2) {
        tracing::debug!(error = %e, "libseccomp cannot build a binary tree; using a list");
    }

    let denied = |name: &str| extra_deny.iter().any(|d| d == name);
    let eperm = ScmpAction::Errno(libc::EPERM);
    let eafnosupport = ScmpAction::Errno(libc::EAFNOSUPPORT);

    for name in ALLOW.iter().filter(|n| !denied(n)) {
        if let Some(sc) = syscall(name) {
            f.add_rule(ScmpAction::Allow, sc)
                .map_err(|e| err(&format!("allow {name}"), e))?;
        }
    }
    let extra = extra_deny
        .iter()
        .map(String::as_str)
        .filter(|n| !DENY_EPERM.contains(n));
    for name in DENY_EPERM.iter().copied().chain(extra) {
        if let Some(sc) = syscall(name) {
            f.add_rule(eperm, sc)
                .map_err(|e| err(&format!("deny {name}"), e))?;
        }
    }
    // clone3 is deliberately in no list: the default action answers ENOSYS
    // (libseccomp refuses a rule that repeats the default action).
    let mut cond = |name: &str, action: ScmpAction, cmps: &[Cmp]| -> Result<(), String> {
        if denied(name) {
            return Ok(());
        }
        match syscall(name) {
            Some(sc) => f
                .add_rule_conditional(action, sc, cmps)
                .map(|_| ())
                .map_err(|e| err(&format!("rule for {name}"), e)),
            None => Ok(()),
        }
    };

    // ioctl: everything but the denied requests, on the low 32 bits.
    for (mask, value) in complement(&DENIED_IOCTLS) {
        cond(
            "ioctl",
            ScmpAction::Allow,
            &[Cmp::new(1, Op::MaskedEqual(mask), value)],
        )?;
    }
    for req in DENIED_IOCTLS {
        cond(
            "ioctl",
            eperm,
            &[Cmp::new(1, Op::MaskedEqual(LOW32), u64::from(req))],
        )?;
    }

    // clone and unshare: no namespace flags (the kernel reads the low 32
    // bits of clone's flags; unshare's are all in the low 32 bits too).
    let ns_mask = NS_FLAGS.iter().fold(0u64, |m, f| m | flag(*f));
    let unshare_mask = ns_mask | flag(libc::CLONE_NEWTIME);
    for (name, mask) in [("clone", ns_mask), ("unshare", unshare_mask)] {
        cond(
            name,
            ScmpAction::Allow,
            &[Cmp::new(0, Op::MaskedEqual(mask), 0)],
        )?;
        for bit in (0..64).map(|b| 1u64 << b).filter(|b| mask & b != 0) {
            cond(name, eperm, &[Cmp::new(0, Op::MaskedEqual(bit), bit)])?;
        }
    }

    // personality: only the query (0xffffffff) and PER_LINUX (0).
    const QUERY: u32 = 0xffff_ffff;
    for value in [0, QUERY] {
        cond(
            "personality",
            ScmpAction::Allow,
            &[Cmp::new(0, Op::MaskedEqual(LOW32), u64::from(value))],
        )?;
    }
    for (mask, value) in complement(&[0, QUERY]) {
        cond(
            "personality",
            eperm,
            &[Cmp::new(0, Op::MaskedEqual(mask), value)],
        )?;
    }

    // socket: every family below FAMILY_LIMIT gets a rule, so nothing
    // falls through to the default action.
    let unix = libc::AF_UNIX as u64;
    let netlink = libc::AF_NETLINK as u64;
    let inet = [libc::AF_INET as u64, libc::AF_INET6 as u64];
    let family = |f: u64| Cmp::new(0, Op::Equal, f);
    cond("socket", ScmpAction::Allow, &[family(unix)])?;
    cond(
        "socket",
        ScmpAction::Allow,
        &[
            family(netlink),
            Cmp::new(2, Op::Equal, libc::NETLINK_ROUTE as u64),
        ],
    )?;
    cond(
        "socket",
        eperm,
        &[
            family(netlink),
            Cmp::new(2, Op::NotEqual, libc::NETLINK_ROUTE as u64),
        ],
    )?;
    for f_inet in inet {
        if families == Families::WithInet {
            for t in 0..=SOCK_TYPE_MASK {
                let ok = t == libc::SOCK_STREAM as u64 || t == libc::SOCK_DGRAM as u64;
                cond(
                    "socket",
                    if ok { ScmpAction::Allow } else { eperm },
                    &[
                        family(f_inet),
                        Cmp::new(1, Op::MaskedEqual(SOCK_TYPE_MASK), t),
                    ],
                )?;
            }
        } else {
            cond("socket", eafnosupport, &[family(f_inet)])?;
        }
    }
    for f_other in (0..FAMILY_LIMIT).filter(|x| *x != unix && *x != netlink && !inet.contains(x)) {
        cond("socket", eafnosupport, &[family(f_other)])?;
    }
    cond(
        "socket",
        eafnosupport,
        &[Cmp::new(0, Op::GreaterEqual, FAMILY_LIMIT)],
    )?;

    // socketpair: unix only.
    cond("socketpair", ScmpAction::Allow, &[family(unix)])?;
    for f_other in (0..FAMILY_LIMIT).filter(|x| *x != unix) {
        cond("socketpair", eafnosupport, &[family(f_other)])?;
    }
    cond(
        "socketpair",
        eafnosupport,
        &[Cmp::new(0, Op::GreaterEqual, FAMILY_LIMIT)],
    )?;

    export(&f)
}

fn syscall(name: &str) -> Option<ScmpSyscall> {
    match ScmpSyscall::from_name(name) {
        Ok(sc) => Some(sc),
        Err(_) => {
            tracing::trace!(
                syscall = name,
                "not a syscall of this architecture; skipped"
            );
            None
        }
    }
}

fn flag(f: i32) -> u64 {
    u64::from(f.cast_unsigned())
}

fn export(f: &ScmpFilterContext) -> Result<Vec<u8>, String> {
    const NAME: &CStr = c"mcp-sandbox-seccomp-export";
    let mut file =
        sys::scratch_memfd(NAME).map_err(|e| format!("seccomp: cannot create memfd: {e}"))?;
    f.export_bpf(&file)
        .map_err(|e| format!("seccomp: cannot export BPF: {e}"))?;
    let mut bpf = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bpf))
        .map_err(|e| format!("seccomp: cannot read exported BPF: {e}"))?;
    if bpf.is_empty() || bpf.len() % 8 != 0 {
        return Err(format!(
            "seccomp: exported BPF has {} bytes, not a whole number of instructions",
            bpf.len()
        ));
    }
    Ok(bpf)
}

/// The complement of `points` in the 32-bit space, as disjoint blocks
/// `(mask, value)`: `x` is in a block when `x & mask == value`. Every `x`
/// not in `points` is in exactly one block; no point is in any. Each block
/// fixes the top bits of some point down to a bit where it differs from
/// that point, so there are at most 32 per point. Two such prefix blocks
/// are either disjoint or nested, and a block holding another block of a
/// point would hold that point and be skipped, so the blocks are disjoint.
pub(crate) fn complement(points: &[u32]) -> Vec<(u64, u64)> {
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for &p in points {
        for bit in (0..32).rev() {
            // Top bits above `bit` as in `p`, `bit` itself flipped.
            let mask = !((1u32 << bit) - 1);
            let value = (p ^ (1u32 << bit)) & mask;
            let holds_a_point = points.iter().any(|&q| q & mask == value);
            let block = (u64::from(mask), u64::from(value));
            if !holds_a_point && !blocks.contains(&block) {
                blocks.push(block);
            }
        }
    }
    blocks
}
