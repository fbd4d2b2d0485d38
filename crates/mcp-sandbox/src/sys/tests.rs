//! The clone-based spawn: what the child starts with, and how failures are
//! reported. These spawn plain host programs (no bubblewrap).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::join_bench::ScratchV2Cgroup;

use super::{CgroupJoin, ChildSetup, Rlimits, Spawn, read_both, reap};

/// Runs `spawn` to its end: (wait status, stdout, stderr).
fn run(spawn: Spawn) -> (i32, String, String) {
    let child = spawn.spawn().unwrap();
    let (out, err) = read_both(child.stdout, child.stderr).unwrap();
    let status = reap(child.pid).unwrap().status;
    (
        status,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// A copy of stderr at a fixed high descriptor number, inheritable
/// (no close-on-exec) unless `cloexec`.
fn high_fd(at: i32, cloexec: bool) -> OwnedFd {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: duplicates stderr (always open in a test) to a fresh
    // descriptor at or above `at`, which the OwnedFd then owns.
    let fd = unsafe { libc::fcntl(2, cmd, at) };
    assert!(fd >= at, "{}", std::io::Error::last_os_error());
    // SAFETY: fcntl returned a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn sig_mask(line: &str, status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .unwrap_or_else(|| panic!("no {line} in {status}"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn the_child_starts_with_no_blocked_signals_and_default_sigpipe() {
    // The Rust runtime ignores SIGPIPE; block SIGUSR1 on this thread too.
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: initialises `set`, then blocks SIGUSR1 on this test thread
    // (saving the old mask, restored below).
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), old.as_mut_ptr());
    }
    // Both ways of cloning: plain clone, and clone3 into a cgroup.
    let cg = V2Cgroup::new("signals");
    let outs: Vec<(i32, String)> = [CgroupJoin::None, CgroupJoin::Into(cg.open())]
        .into_iter()
        .map(|cgroup| {
            let setup = ChildSetup {
                cgroup,
                ..ChildSetup::none()
            };
            let spawn =
                Spawn::new(Path::new("/bin/grep"), ["^Sig", "/proc/self/status"], setup).unwrap();
            let (status, out, _) = run(spawn);
            (status, out)
        })
        .collect();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
    }
    for (status, out) in outs {
        assert_eq!(status, 0, "{out}");
        assert_eq!(sig_mask("SigBlk:", &out), 0, "{out}");
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(sig_mask("SigIgn:", &out) & sigpipe, 0, "{out}");
    }
}

#[test]
fn the_child_gets_an_empty_environment_root_cwd_and_only_the_inherited_fds() {
    let leaked = high_fd(900, false);
    let cg = V2Cgroup::new("fds");
    // Both ways of cloning: plain clone, and clone3 into a cgroup.
    for cgroup in [CgroupJoin::None, CgroupJoin::Into(cg.open())] {
        let passed = high_fd(910, true);
        let setup = ChildSetup {
            inherit: vec![passed],
            cgroup,
            ..ChildSetup::none()
        };
        let script = "wc -c < /proc/$$/environ; pwd; ls /proc/$$/fd";
        let spawn = Spawn::new(Path::new("/bin/sh"), ["-c", script], setup).unwrap();
        let (status, out, err) = run(spawn);
        assert_eq!(status, 0, "{out} {err}");
        let mut lines = out.lines();
        assert_eq!(lines.next().map(str::trim), Some("0"), "{out}");
        assert_eq!(lines.next(), Some("/"), "{out}");
        let fds: Vec<&str> = lines.collect();
        assert!(
            fds.contains(&"910"),
            "the inherited descriptor is missing: {fds:?}"
        );
        let leaked_no = leaked.as_raw_fd().to_string();
        assert!(
            !fds.contains(&leaked_no.as_str()),
            "a descriptor without close-on-exec leaked: {fds:?}"
        );
        // stdio and the inherited one: nothing else (the cgroup
        // directory included).
        assert_eq!(fds, ["0", "1", "2", "910"]);
    }
}

#[test]
fn rlimits_and_a_new_process_group_are_applied() {
    let setup = ChildSetup {
        limits: Rlimits {
            nofile: 77,
            ..ChildSetup::none().limits
        },
        ..ChildSetup::none()
    };
    let spawn = Spawn::new(
        Path::new("/bin/sh"),
        ["-c", "ulimit -n; ulimit -Hn; cut -d' ' -f1,5 /proc/$$/stat"],
        setup,
    )
    .unwrap();
    let child = spawn.spawn().unwrap();
    let pid = child.pid;
    let (out, _) = read_both(child.stdout, child.stderr).unwrap();
    assert_eq!(reap(pid).unwrap().status, 0);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out, format!("77\n77\n{pid} {pid}\n"));
}

#[test]
fn root_switches_to_the_owner_without_supplementary_groups() {
    // Like every sandbox test, this one needs root rather than skipping.
    assert_eq!(super::geteuid(), 0, "the sandbox tests run as root");
    let mut spawn = Spawn::new(
        Path::new("/usr/bin/id"),
        Vec::<&str>::new(),
        ChildSetup::none(),
    )
    .unwrap();
    spawn.owner = Some((65534, 65533));
    let (status, out, err) = run(spawn);
    assert_eq!(status, 0, "{err}");
    assert!(
        out.starts_with("uid=65534") && out.contains("gid=65533") && !out.contains("groups=0"),
        "{out}"
    );
    assert!(!out.contains(",0(") && !out.contains("=0("), "{out}");
}

#[test]
fn a_missing_program_is_not_found() {
    let spawn = Spawn::new(Path::new("/nonexistent/bwrap"), ["x"], ChildSetup::none()).unwrap();
    let err = spawn.spawn().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

/// Asserts that a spawn joining its cgroup by `cgroup` fails at that step
/// and runs nothing.
fn refused_at_the_cgroup_and_nothing_runs(cgroup: CgroupJoin) {
    let marker = tempfile::tempdir().unwrap();
    let file = marker.path().join("ran");
    let setup = ChildSetup {
        cgroup,
        ..ChildSetup::none()
    };
    let script = format!("touch {}", file.display());
    let spawn = Spawn::new(Path::new("/bin/sh"), ["-c", script.as_str()], setup).unwrap();
    let err = spawn.spawn().unwrap_err();
    assert!(err.to_string().contains("joining the task cgroup"), "{err}");
    assert!(!file.exists(), "the command ran although a step failed");
}

#[test]
fn a_failed_step_is_named_and_nothing_runs() {
    // A read-only descriptor as the cgroup file: the child's write fails.
    let dev_null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    refused_at_the_cgroup_and_nothing_runs(CgroupJoin::Write(vec![dev_null]));
}

/// A fresh cgroup in this host's v2 hierarchy (on a hybrid host the
/// controller-less `unified` mount). Like every sandbox test, this needs
/// root rather than skipping.
struct V2Cgroup(ScratchV2Cgroup);

impl V2Cgroup {
    fn new(name: &str) -> Self {
        assert_eq!(super::geteuid(), 0, "the sandbox tests run as root");
        Self(ScratchV2Cgroup::new(&format!("sys-test-{name}")).unwrap())
    }

    fn open(&self) -> OwnedFd {
        self.0.open().unwrap()
    }

    fn path(&self) -> &str {
        &self.0.path
    }
}

/// Asserts that a child joining its cgroup by `cgroup` finds itself in
/// `cg` (the v2 line of its `/proc/self/cgroup`).
fn child_lands_in(cg: &V2Cgroup, cgroup: CgroupJoin) {
    let setup = ChildSetup {
        cgroup,
        ..ChildSetup::none()
    };
    let spawn = Spawn::new(Path::new("/bin/cat"), ["/proc/self/cgroup"], setup).unwrap();
    let (status, out, err) = run(spawn);
    assert_eq!(status, 0, "{err}");
    let v2 = out.lines().find_map(|l| l.strip_prefix("0::"));
    assert_eq!(v2, Some(cg.path()), "{out}");
}

#[test]
fn a_child_is_cloned_into_its_v2_cgroup() {
    let cg = V2Cgroup::new("into");
    child_lands_in(&cg, CgroupJoin::Into(cg.open()));
    // Through clone3, not the cgroup.procs fallback (this kernel is 5.7
    // or later, on x86_64).
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        super::CLONE_INTO_CGROUP_STATE.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn the_fallback_writes_the_v2_cgroup_procs() {
    // What a kernel without CLONE_INTO_CGROUP gets instead: the child
    // writes itself into the directory's cgroup.procs.
    let cg = V2Cgroup::new("write");
    let procs = super::procs_file_of(&cg.open()).unwrap();
    child_lands_in(&cg, CgroupJoin::Write(vec![procs]));
}

#[test]
fn a_directory_that_is_not_a_cgroup_is_refused_and_nothing_runs() {
    let not_a_cgroup = tempfile::tempdir().unwrap();
    let dir = OwnedFd::from(std::fs::File::open(not_a_cgroup.path()).unwrap());
    refused_at_the_cgroup_and_nothing_runs(CgroupJoin::Into(dir));
}

#[test]
fn arguments_with_a_nul_byte_are_refused() {
    let err = Spawn::new(Path::new("/bin/echo"), ["a\0b"], ChildSetup::none()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn a_child_that_cannot_enter_its_mount_namespace_reports_it() {
    let mut spawn =
        Spawn::new(Path::new("/bin/true"), [] as [&str; 0], ChildSetup::none()).unwrap();
    // Not a namespace: setns refuses it.
    let not_ns = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    spawn.mnt_ns = Some(std::sync::Arc::new(not_ns));
    let e = spawn.spawn().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("entering the lean mount namespace: "),
        "{e}"
    );
}

/// The lean namespace bubblewrap starts in holds its roots and what
/// bubblewrap itself needs, and none of the host's other mounts.
#[test]
fn a_lean_namespace_holds_its_roots_and_nothing_else() {
    assert_eq!(super::geteuid(), 0, "the sandbox tests run as root");
    let lean = |sources: &[std::path::PathBuf]| crate::lean::build(sources).unwrap();
    let uid_map = lean_namespace_holds_its_roots(&lean);
    // Root's: the host's user namespace, whose map covers every uid.
    assert!(uid_map.contains("4294967295"), "{uid_map}");
}

/// The same, built as an unprivileged gateway builds it: in a user
/// namespace of its own that maps the gateway's ids to themselves (here
/// root's, which is what these tests run as), entered before the mount
/// namespace by every spawn.
#[test]
fn a_lean_namespace_in_a_user_namespace_holds_its_roots_and_nothing_else() {
    let lean =
        |sources: &[std::path::PathBuf]| crate::lean::build_in_user_namespace(sources).unwrap();
    let uid_map = lean_namespace_holds_its_roots(&lean);
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "1"]
    );
}

/// Builds a lean namespace holding a `files` directory with `build`,
/// checks what a process started in it sees, and answers its uid map.
fn lean_namespace_holds_its_roots(
    build: &dyn Fn(&[std::path::PathBuf]) -> crate::lean::LeanNs,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("marker"), "here").unwrap();
    let lean = build(std::slice::from_ref(&files));
    assert!(lean.holds(&files.join("marker")));
    assert!(lean.holds(Path::new("/usr/bin/bwrap")));
    assert!(!lean.holds(Path::new("/sys")));
    assert!(!lean.holds(dir.path()));

    let mut spawn = Spawn::new(
        Path::new("/usr/bin/cat"),
        [
            "/proc/self/mountinfo".to_owned(),
            "/proc/self/uid_map".to_owned(),
            files.join("marker").display().to_string(),
        ],
        ChildSetup::none(),
    )
    .unwrap();
    spawn.mnt_ns = Some(std::sync::Arc::clone(&lean.fds.mnt));
    spawn.user_ns = lean.fds.user.clone();
    let (status, out, err) = run(spawn);
    assert_eq!(status, 0, "{err}");
    assert!(out.ends_with("here"), "{out}");
    // mountinfo lines have 10 or more fields, the uid map's line 3.
    let (mountinfo, uid_map): (Vec<&str>, Vec<&str>) = out
        .lines()
        .filter(|l| !l.starts_with("here"))
        .partition(|l| l.split_whitespace().count() > 3);
    let points: Vec<&str> = mountinfo
        .iter()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    for needed in ["/", "/usr", "/etc", "/proc", "/dev"] {
        assert!(points.contains(&needed), "{needed} missing: {points:?}");
    }
    assert!(points.contains(&files.to_str().unwrap()), "{points:?}");
    assert!(
        !points.iter().any(|p| p.starts_with("/sys")),
        "host mounts leaked in: {points:?}"
    );
    assert_eq!(lean.mounts, points.len(), "{points:?}");
    // The host does not see the namespace's mounts.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains("mcp-sandbox-lean"), "{host}");
    uid_map.join("\n")
}

#[test]
fn lean_roots_drop_duplicates_nested_paths_and_the_root() {
    let roots = crate::lean::roots(&[
        "/usr/bin/bwrap".into(),
        "/srv/data/files".into(),
        "/srv/data".into(),
        "/srv/data".into(),
        "/".into(),
        "relative".into(),
    ]);
    let want: Vec<std::path::PathBuf> = ["/dev", "/etc", "/proc", "/srv/data", "/usr"]
        .iter()
        .map(Into::into)
        .collect();
    assert_eq!(roots, want);
}

/// `poll` for input on `fd` for `ms`: the revents, 0 on timeout.
fn poll_in(fd: &OwnedFd, ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    p.revents
}

#[test]
fn a_gate_opens_on_its_byte_and_never_on_a_lost_writer() {
    // Opened: the reader gets exactly the byte.
    let (writer, reader) = super::gate_pipe().unwrap();
    assert_eq!(poll_in(&reader, 0), 0, "a fresh gate is closed");
    super::open_gate(&writer).unwrap();
    assert_ne!(poll_in(&reader, 1000) & libc::POLLIN, 0);
    let mut b = [0u8; 2];
    // SAFETY: reads into a buffer we own.
    let n = unsafe { libc::read(reader.as_raw_fd(), b.as_mut_ptr().cast(), 2) };
    assert_eq!((n, b[0]), (1, b'1'));

    // Lost writer (what a crashed gateway leaves): a plain pipe's reader
    // would see end-of-file at once, and bubblewrap would go on to exec;
    // this one stays blocked.
    let (writer, reader) = super::gate_pipe().unwrap();
    drop(writer);
    assert_eq!(poll_in(&reader, 200), 0, "the reader saw end-of-file");

    // Both ends are close-on-exec in the gateway; only the spawn's inherit
    // list passes the reader on.
    let (writer, reader) = super::gate_pipe().unwrap();
    for fd in [&writer, &reader] {
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
