//! The lean namespace's builder: a child cloned into a mount namespace of
//! its own, and a user namespace when the gateway is unprivileged (see the
//! parent module's documentation).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

use super::{LeanNs, NsFds, Op, apply, cstr, plan, roots, staging_dir};

/// The child's steps, to say which one failed.
const STEPS: &[&str] = &[
    "",
    "denying setgroups in the new user namespace",
    "mapping the gateway's uid in the new user namespace",
    "mapping the gateway's gid in the new user namespace",
    "opening the new namespaces",
    "making the new mount namespace a slave of the host's",
    "mounting the staging tmpfs",
    "filling the staging tmpfs",
    "making the staging tmpfs the root",
];
const FILL: u32 = 7;

/// What the child reads (prepared here) and writes back (atomics).
struct Ctx {
    /// Whether the child is in a user namespace of its own, whose maps
    /// it writes and which it opens too.
    user_ns: bool,
    uid_map: CString,
    gid_map: CString,
    staging: CString,
    ops: Vec<Op>,
    /// Index into [`STEPS`] of the step that failed; 0 = none.
    failed: AtomicU32,
    /// The [`Op`] that failed, when `failed` is [`FILL`].
    failed_op: AtomicUsize,
    errno: AtomicI32,
    user_fd: AtomicI32,
    mnt_fd: AtomicI32,
    mounts: AtomicUsize,
}

/// Builds the namespace (see [`super::build`]), in a user namespace of
/// its own when `user_ns`.
pub(super) fn build(sources: &[PathBuf], user_ns: bool) -> io::Result<LeanNs> {
    let roots = roots(sources);
    let staging = staging_dir()?;
    let built = build_at(&staging, &roots, user_ns);
    // On the host the staging directory is an empty directory; in the
    // namespace it became the root, so removing it detaches nothing.
    let _ = std::fs::remove_dir(&staging);
    built.map(|(fds, mounts)| LeanNs { fds, roots, mounts })
}

fn build_at(
    staging: &std::path::Path,
    roots: &[PathBuf],
    user_ns: bool,
) -> io::Result<(NsFds, usize)> {
    let (uid, gid) = (crate::sys::geteuid(), crate::sys::getegid());
    let ctx = Ctx {
        user_ns,
        uid_map: CString::new(format!("{uid} {uid} 1\n")).map_err(io::Error::other)?,
        gid_map: CString::new(format!("{gid} {gid} 1\n")).map_err(io::Error::other)?,
        staging: cstr(staging)?,
        ops: plan(staging, roots)?,
        failed: AtomicU32::new(0),
        failed_op: AtomicUsize::new(0),
        errno: AtomicI32::new(0),
        user_fd: AtomicI32::new(-1),
        mnt_fd: AtomicI32::new(-1),
        mounts: AtomicUsize::new(0),
    };
    // SAFETY: `child` makes only plain syscalls on `ctx`, which lives on
    // this frame until `run_cloned` returned (the child has exited), and
    // ends with `_exit`. CLONE_FILES puts the descriptors it opens into
    // this process's table.
    let flags = if user_ns {
        libc::CLONE_FILES | libc::CLONE_NEWNS | libc::CLONE_NEWUSER
    } else {
        libc::CLONE_FILES | libc::CLONE_NEWNS
    };
    let code = unsafe {
        crate::sys::run_cloned(flags, child, std::ptr::from_ref(&ctx).cast_mut().cast())
    }?;
    // SAFETY: each is -1 or a descriptor the child opened for us (shared
    // table) that nothing else owns.
    let own = |fd: i32| (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
    let user = own(ctx.user_fd.load(Ordering::Acquire));
    let mnt = own(ctx.mnt_fd.load(Ordering::Acquire));
    let failed = ctx.failed.load(Ordering::Acquire);
    if failed != 0 || code != 0 {
        let e = io::Error::from_raw_os_error(ctx.errno.load(Ordering::Acquire));
        if failed == FILL
            && let Some(op) = ctx.ops.get(ctx.failed_op.load(Ordering::Acquire))
        {
            return Err(op.error(e.raw_os_error().unwrap_or(libc::EIO)));
        }
        let step = STEPS.get(failed as usize).copied().unwrap_or("");
        return Err(io::Error::new(
            e.kind(),
            format!("building the lean namespace: {step} (exit {code}): {e}"),
        ));
    }
    match (user, mnt) {
        (user, Some(mnt)) if user.is_some() == user_ns => Ok((
            NsFds {
                mnt: Arc::new(mnt),
                user: user.map(Arc::new),
            },
            ctx.mounts.load(Ordering::Acquire),
        )),
        _ => Err(io::Error::other(
            "the lean namespace's builder exited without its namespaces",
        )),
    }
}

/// The cloned child: a new mount namespace (and user namespace when
/// `ctx.user_ns`), suspended parent thread, shared memory and descriptors.
/// Plain syscalls only.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Ctx` of `build_at`, alive until we exit.
    let ctx = unsafe { &*arg.cast::<Ctx>() };
    let fail = |step: u32| -> libc::c_int {
        // SAFETY: reads this thread's errno, then exits without unwinding.
        unsafe {
            ctx.errno
                .store(*libc::__errno_location(), Ordering::Release);
            ctx.failed.store(step, Ordering::Release);
            libc::_exit(1)
        }
    };
    // SAFETY: plain syscalls on NUL-terminated strings and buffers of
    // `ctx` or of this frame.
    unsafe {
        let flags = libc::O_RDONLY | libc::O_CLOEXEC;
        if ctx.user_ns {
            if !write_file(c"/proc/self/setgroups", b"deny") {
                return fail(1);
            }
            if !write_file(c"/proc/self/uid_map", ctx.uid_map.as_bytes()) {
                return fail(2);
            }
            if !write_file(c"/proc/self/gid_map", ctx.gid_map.as_bytes()) {
                return fail(3);
            }
            let user = libc::open(c"/proc/self/ns/user".as_ptr(), flags);
            if user < 0 {
                return fail(4);
            }
            ctx.user_fd.store(user, Ordering::Release);
        }
        let mnt = libc::open(c"/proc/self/ns/mnt".as_ptr(), flags);
        if mnt < 0 {
            return fail(4);
        }
        ctx.mnt_fd.store(mnt, Ordering::Release);
        // Host mounts still propagate in; nothing of ours propagates out.
        let none = std::ptr::null::<libc::c_char>();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return fail(5);
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            ctx.staging.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755".as_ptr().cast(),
        ) != 0
        {
            return fail(6);
        }
        for (i, op) in ctx.ops.iter().enumerate() {
            if let Err(errno) = apply(op) {
                *libc::__errno_location() = errno;
                ctx.failed_op.store(i, Ordering::Release);
                return fail(FILL);
            }
        }
        // pivot_root(".", ".") stacks the old root on the tmpfs, which is
        // then detached (pivot_root moved its lock to the new root).
        if libc::chdir(ctx.staging.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return fail(8);
        }
        ctx.mounts
            .store(count_lines(c"/proc/self/mountinfo"), Ordering::Release);
        libc::_exit(0)
    }
}

/// Writes `data` to the file at `path` in one `write`.
///
/// # Safety
/// Plain syscalls only.
unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) -> bool {
    // SAFETY: `path` is NUL-terminated, `data` a valid buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        usize::try_from(n).is_ok_and(|n| n == data.len())
    }
}

/// Lines of the file at `path` (0 when it cannot be read), read into a
/// buffer on the stack.
///
/// # Safety
/// Plain syscalls only.
unsafe fn count_lines(path: &std::ffi::CStr) -> usize {
    // SAFETY: `path` is NUL-terminated; `buf` is a valid, writable buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let mut buf = [0u8; 4096];
        let mut lines = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count();
        }
        libc::close(fd);
        lines
    }
}
