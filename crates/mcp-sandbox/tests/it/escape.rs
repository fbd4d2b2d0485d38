//! The escape suite: a hostile command (mostly python3 with ctypes, so it
//! can make any syscall) tries each known way out of the sandbox for real,
//! and each test asserts the blocked outcome: the errno, the exit status,
//! the `Ending`, the limit counters, and the state of the host afterwards.
//! See docs/security/THREAT_MODEL.md for the defence each test proves.
//!
//! Syscall numbers are x86_64's; on another architecture the tests that
//! use them fail and say so.

use std::collections::BTreeMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mcp_core::{ChunkKind, NetworkAccess, ResourceLimits, TaskId};
use mcp_sandbox::{Ending, RunOutcome, RunSpec};

use super::{Harness, POOLED, host_is_root, processes_matching, profiles_dir, text};

/// A profile with small limits, so every limit can be hit in a second or two.
const TIGHT: &str = r#"
description = "escape suite: small limits"
[filesystem]
ro_bind = ["/usr"]
ro_bind_try = ["/bin", "/sbin", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/alternatives",
               "/etc/passwd", "/etc/group"]
tmp_size = "8MiB"
workspace_size = "8MiB"
[limits]
memory = "256MiB"
pids = 64
nofile = 256
fsize = "1MiB"
cpus = 1.0
cpu_time_secs = 2
[env]
PATH = "/usr/bin:/bin"
HOME = "/workspace"
LANG = "C.UTF-8"
"#;

/// Runs python3 inside with helpers: `sc(nr, *args)` makes a raw syscall and
/// returns "ok" or the errno's name; `out(k, v)` prints `k=v`.
const PRELUDE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    cargs = [ctypes.c_ulong(a & 0xffffffffffffffff) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *cargs)
    if r >= 0:
        return "ok"
    e = ctypes.get_errno()
    return errno.errorcode.get(e, str(e))
def out(k, v):
    print(f"{k}={v}", flush=True)
"#;

struct Escape {
    h: Harness,
    _profiles: tempfile::TempDir,
}

/// A harness whose profiles are the shipped ones plus `tight`.
fn escape(max_output: usize) -> Escape {
    let profiles = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(profiles_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&p, profiles.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(profiles.path().join("tight.toml"), TIGHT).unwrap();
    let h = Harness::with_profiles_pooled(max_output, profiles.path(), POOLED);
    assert!(
        h.sandbox.resolve_command("default", "python3").is_some(),
        "the escape suite's attacker is python3: apt-get install python3"
    );
    Escape {
        h,
        _profiles: profiles,
    }
}

/// This process and suite (cold or pooled, which run at the same time in
/// one process): the markers, keys and names tests put on the host must
/// differ between the two.
fn instance() -> u32 {
    std::process::id().wrapping_mul(2) + u32::from(POOLED)
}

/// The full name of test `name` of this module (`escape::…` or
/// `pooled::escape::…`), to re-run it as a child process.
fn test_name(name: &str) -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    format!("{module}::{name}")
}

fn x86_64_only() {
    #[cfg(not(target_arch = "x86_64"))]
    panic!("the escape suite's syscall numbers are x86_64's: port them to this architecture");
}

impl Escape {
    fn py(&self, profile: &str, script: &str) -> RunSpec {
        let mut spec = self
            .h
            .spec("python3", &["-c", &format!("{PRELUDE}\n{script}")]);
        spec.profile = profile.into();
        spec
    }

    fn sh(&self, profile: &str, script: &str) -> RunSpec {
        let mut spec = self.h.sh(script);
        spec.profile = profile.into();
        spec
    }

    /// Runs and returns the outcome with the `k=v` lines of stdout.
    async fn run_kv(&self, spec: RunSpec) -> (RunOutcome, BTreeMap<String, String>) {
        let (out, _) = self.h.run(spec).await;
        let kv = text(&out.result.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (out, kv)
    }

    /// Asserts that the task cgroups of `task` are gone (they are removed
    /// in the background right after the run), and those of the pooled
    /// sandboxes the harness used (named when they were started, not after
    /// their task).
    async fn assert_cgroups_removed(&self, task: TaskId) {
        let dirs = self.h.sandbox.enforcement().cgroup_dirs;
        assert!(!dirs.is_empty(), "no task cgroups on this host");
        let mut names = self.h.used_pooled();
        names.push(task.to_string());
        let left = || -> Vec<PathBuf> {
            dirs.iter()
                .flat_map(|d| names.iter().map(|n| d.join(n)))
                .filter(|d| d.exists())
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !left().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(left(), Vec::<PathBuf>::new(), "task cgroups left behind");
    }
}

fn expect(kv: &BTreeMap<String, String>, out: &RunOutcome, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(
            kv.get(*k).map(String::as_str),
            Some(*v),
            "{k}: all results {kv:?}\nstderr: {}",
            text(&out.result.stderr)
        );
    }
}

// ------------------------------------------------------------- seccomp

/// Every blocked syscall fails with EPERM (or ENOSYS where that is the
/// default for what is not on the allowlist). Several would succeed without
/// the filter for an unprivileged user (marked "kernel allows"): that is
/// what makes the filter, not missing capabilities, the proven defence.
#[tokio::test]
async fn blocked_syscalls_fail_with_eperm() {
    x86_64_only();
    let e = escape(1 << 20);
    let script = r#"
pid = os.getpid()
buf = ctypes.create_string_buffer(256)
calls = {
    "mount": (165, 0, 0, 0, 0, 0), "umount2": (166, 0, 0), "pivot_root": (155, 0, 0),
    "chroot": (161, ctypes.c_char_p(b"/")), "setns": (308, 0, 0), "fsopen": (430, ctypes.c_char_p(b"tmpfs"), 0),
    "open_tree": (428, 0, 0, 0), "move_mount": (429, 0, 0, 0, 0, 0), "mount_setattr": (442, 0, 0, 0, 0, 0),
    # kernel allows: tracing oneself, reading one's own memory, comparing one's own fds
    "ptrace_traceme": (101, 0, 0, 0, 0),
    "ptrace_attach_parent": (101, 16, os.getppid(), 0, 0),
    "ptrace_attach_pid1": (101, 16, 1, 0, 0),
    "process_vm_readv": (310, pid, 0, 0, 0, 0, 0), "process_vm_writev": (311, pid, 0, 0, 0, 0, 0),
    "kcmp": (312, pid, pid, 0, 0, 0), "pidfd_getfd": (438, 0, 0, 0),
    # kernel allows: the session keyring id, user-mode userfaultfd, io_uring
    "keyctl": (250, 0, -3, 0), "add_key": (248, 0, 0, 0, 0, 0), "request_key": (249, 0, 0, 0, 0),
    "bpf": (321, 0, buf, 72), "perf_event_open": (298, buf, 0, -1, -1, 0),
    "userfaultfd": (323, 1), "io_uring_setup": (425, 1, buf), "io_uring_enter": (426, 0, 0, 0, 0, 0, 0),
    "io_uring_register": (427, 0, 0, 0, 0),
    "kexec_load": (246, 0, 0, 0, 0), "kexec_file_load": (320, 0, 0, 0, 0, 0),
    "init_module": (175, 0, 0, 0), "finit_module": (313, 0, 0, 0), "delete_module": (176, 0, 0),
    "reboot": (169, 0xfee1dead, 672274793, 0x4321fedc, 0), "swapon": (167, 0, 0), "swapoff": (168, 0),
    "open_by_handle_at": (304, 0, 0, 0),
    # kernel allows: PER_LINUX32
    "personality_linux32": (135, 8), "personality_high_bits": (135, (1 << 32) | 8),
    "settimeofday": (164, 0, 0), "clock_settime": (227, 0, 0), "sethostname": (170, 0, 0),
    "iopl": (172, 3), "ioperm": (173, 0, 1, 1), "modify_ldt": (154, 0, 0, 0), "acct": (163, 0),
    "quotactl": (179, 0, 0, 0, 0), "syslog": (103, 3, buf, 16), "mbind": (237, 0, 0, 0, 0, 0, 0),
    "set_mempolicy": (238, 0, 0, 0), "migrate_pages": (256, pid, 0, 0, 0), "move_pages": (279, pid, 0, 0, 0, 0, 0),
    "unshare_user": (272, 0x10000000), "unshare_mount": (272, 0x00020000), "unshare_net": (272, 0x40000000),
    "unshare_time": (272, 0x80), "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0),
    "clone_newpid_high_bits": (56, (1 << 40) | 0x20000000 | 17, 0, 0, 0, 0),
    # not on the allowlist: the default answer
    "clone3": (435, buf, 88), "fanotify_mark": (301, -1, 0, 0, -1, 0),
    # controls: allowed
    "getpid": (39,), "personality_query": (135, 0xffffffff), "unshare_fs": (272, 0x200),
}
for name, (nr, *args) in calls.items():
    out(name, sc(nr, *args))
"#;
    let (out, kv) = e.run_kv(e.py("default", script)).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    let mut want: Vec<(&str, &str)> = [
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "setns",
        "fsopen",
        "open_tree",
        "move_mount",
        "mount_setattr",
        "ptrace_traceme",
        "ptrace_attach_parent",
        "ptrace_attach_pid1",
        "process_vm_readv",
        "process_vm_writev",
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
        "reboot",
        "swapon",
        "swapoff",
        "open_by_handle_at",
        "personality_linux32",
        "personality_high_bits",
        "settimeofday",
        "clock_settime",
        "sethostname",
        "iopl",
        "ioperm",
        "modify_ldt",
        "acct",
        "quotactl",
        "syslog",
        "mbind",
        "set_mempolicy",
        "migrate_pages",
        "move_pages",
        "unshare_user",
        "unshare_mount",
        "unshare_net",
        "unshare_time",
        "clone_newuser",
        "clone_newpid_high_bits",
    ]
    .into_iter()
    .map(|n| (n, "EPERM"))
    .collect();
    want.extend([
        ("clone3", "ENOSYS"),
        ("fanotify_mark", "ENOSYS"),
        ("getpid", "ok"),
        ("personality_query", "ok"),
        ("unshare_fs", "ok"),
    ]);
    expect(&kv, &out, &want);
}

/// Terminal injection: with a pty made the controlling terminal (where the
/// kernel would honour TIOCSTI), pushing input fails, also with garbage in
/// the upper 32 bits of the request, and nothing arrives.
#[tokio::test]
async fn terminal_injection_under_a_pty_is_refused() {
    x86_64_only();
    let e = escape(1 << 20);
    let script = r#"
import pty, fcntl, termios, tty
m, s = pty.openpty()
tty.setraw(s)
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    c = ctypes.c_char(b"x")
    out("tiocsti", sc(16, s, 0x5412, ctypes.byref(c)))
    out("tiocsti_high_bits", sc(16, s, 0x5412 | (1 << 32), ctypes.byref(c)))
    out("tioclinux", sc(16, s, 0x541C, ctypes.byref(ctypes.c_char(b"\x0c"))))
    out("tiocsetd", sc(16, s, 0x5423, ctypes.byref(ctypes.c_int(0))))
    out("tiocgwinsz", sc(16, s, 0x5413, ctypes.create_string_buffer(8)))
    os._exit(0)
os.waitpid(pid, 0)
os.set_blocking(s, False)
try:
    got = os.read(s, 100)
except BlockingIOError:
    got = b""
out("injected_bytes", len(got))
"#;
    let (out, kv) = e.run_kv(e.py("default", script)).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    expect(
        &kv,
        &out,
        &[
            ("tiocsti", "EPERM"),
            ("tiocsti_high_bits", "EPERM"),
            ("tioclinux", "EPERM"),
            ("tiocsetd", "EPERM"),
            ("tiocgwinsz", "ok"),
            ("injected_bytes", "0"),
        ],
    );
}

/// Other ABIs are killed outright: an x32 syscall number and an i386
/// `int 0x80` from a 64-bit process end the process with SIGSYS.
#[tokio::test]
async fn other_abis_are_killed() {
    x86_64_only();
    let e = escape(1 << 20);
    let x32 = r#"
out("before", 1)
libc.syscall(ctypes.c_long(0x40000000 | 39))
out("survived", 1)
"#;
    let i386 = r#"
import mmap
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3]))  # mov eax, 20 (getpid); int 0x80; ret
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
out("before", 1)
f()
out("survived", 1)
"#;
    for (abi, script) in [("x32", x32), ("i386", i386)] {
        let (out, kv) = e.run_kv(e.py("default", script)).await;
        assert_eq!(
            kv.get("before").map(String::as_str),
            Some("1"),
            "{abi}: {kv:?}"
        );
        assert!(
            !kv.contains_key("survived"),
            "{abi}: the syscall returned: {kv:?}"
        );
        assert_eq!(
            out.ending,
            Ending::Exited(128 + libc::SIGSYS),
            "{abi}: {}",
            text(&out.result.stderr)
        );
    }
}

/// Socket families: unix and route netlink only offline; no raw, packet,
/// vsock, other netlink or bluetooth sockets in any mode, whatever the
/// upper bits of the family say.
#[tokio::test]
async fn socket_families_follow_the_network_mode() {
    x86_64_only();
    let e = escape(1 << 20);
    let script = r#"
tries = {
    "unix": (1, 1, 0), "unix_pair": None, "inet_stream": (2, 1, 0), "inet6_dgram": (10, 2, 0),
    "inet_raw": (2, 3, 1), "inet_raw_nonblock": (2, 3 | 0x800, 1), "inet_packet": (2, 10, 0),
    "packet": (17, 3, 0), "packet_high_bits": ((1 << 32) | 17, 3, 0), "vsock": (40, 1, 0),
    "netlink_route": (16, 3, 0), "netlink_audit": (16, 3, 9), "netlink_uevent": (16, 3, 15),
    "bluetooth": (31, 1, 0), "family_99": (99, 1, 0),
}
for name, args in tries.items():
    if args is None:
        fds = (ctypes.c_int * 2)()
        out(name, sc(53, 1, 1, 0, fds))
        out("inet_pair", sc(53, 2, 1, 0, fds))
    else:
        out(name, sc(41, *args))
"#;
    let always = [
        ("unix", "ok"),
        ("unix_pair", "ok"),
        ("inet_pair", "EAFNOSUPPORT"),
        ("packet", "EAFNOSUPPORT"),
        ("packet_high_bits", "EAFNOSUPPORT"),
        ("vsock", "EAFNOSUPPORT"),
        ("netlink_route", "ok"),
        ("netlink_audit", "EPERM"),
        ("netlink_uevent", "EPERM"),
        ("bluetooth", "EAFNOSUPPORT"),
        ("family_99", "EAFNOSUPPORT"),
    ];
    // No network: no inet sockets at all.
    let (out, kv) = e.run_kv(e.py("default", script)).await;
    expect(&kv, &out, &always);
    expect(
        &kv,
        &out,
        &[
            ("inet_stream", "EAFNOSUPPORT"),
            ("inet6_dgram", "EAFNOSUPPORT"),
            ("inet_raw", "EAFNOSUPPORT"),
        ],
    );
    // With inet (build profile: loopback offline, and host network):
    // stream and datagram only.
    for network in [NetworkAccess::None, NetworkAccess::Host] {
        let mut spec = e.py("build", script);
        spec.network = network;
        let (out, kv) = e.run_kv(spec).await;
        expect(&kv, &out, &always);
        expect(
            &kv,
            &out,
            &[
                ("inet_stream", "ok"),
                ("inet6_dgram", "ok"),
                ("inet_raw", "EPERM"),
                ("inet_raw_nonblock", "EPERM"),
                ("inet_packet", "EPERM"),
            ],
        );
    }
}

// ------------------------------------------------------------ identity

/// No capabilities in any set, no-new-privs, and a seccomp filter in force.
#[tokio::test]
async fn proc_status_shows_no_capabilities_nnp_and_seccomp() {
    let e = escape(1 << 20);
    let (out, _) = e
        .h
        .run(e.sh(
            "default",
            "id -u; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status",
        ))
        .await;
    let stdout = text(&out.result.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}: {stdout}");
    }
    assert_eq!(field("NoNewPrivs"), "1", "{stdout}");
    assert_eq!(field("Seccomp"), "2", "{stdout}");
    assert!(
        field("Seccomp_filters").parse::<u32>().unwrap() >= 1,
        "{stdout}"
    );
    let uid = stdout.lines().next().unwrap();
    assert_ne!(uid, "0", "{stdout}");
    if host_is_root() {
        assert_eq!(uid, "65534", "{stdout}");
    }
}

/// A setuid binary planted in /files or /workspace is owned by the sandbox
/// user on the host, never root, cannot be given to root, and both mounts
/// are nosuid inside.
#[tokio::test]
async fn planted_setuid_files_are_never_root_owned() {
    let e = escape(1 << 20);
    let script = "cp /usr/bin/id /files/suid-id && chmod 4755 /files/suid-id; \
                  chown 0:0 /files/suid-id 2>/dev/null && echo chown=ok || echo chown=refused; \
                  echo runs-as=$(/files/suid-id -u); \
                  cp /usr/bin/id /workspace/suid-id && chmod 4755 /workspace/suid-id; \
                  echo ws-runs-as=$(/workspace/suid-id -u); \
                  grep -E ' /(workspace|files) ' /proc/self/mountinfo";
    let (out, _) = e.h.run(e.sh("default", script)).await;
    let stdout = text(&out.result.stdout);
    assert!(stdout.contains("chown=refused"), "{stdout}");
    assert!(!stdout.contains("runs-as=0\n"), "{stdout}");
    assert!(!stdout.contains("ws-runs-as=0\n"), "{stdout}");
    let mounts: Vec<&str> = stdout.lines().filter(|l| l.contains(" - ")).collect();
    assert_eq!(mounts.len(), 2, "{stdout}");
    for m in mounts {
        let opts = m.split(' ').nth(5).unwrap();
        assert!(opts.split(',').any(|o| o == "nosuid"), "not nosuid: {m}");
    }
    let planted = e.h.files_root().join("acme/suid-id");
    let meta = std::fs::metadata(&planted).unwrap();
    assert_ne!(meta.uid(), 0, "{} is root-owned", planted.display());
    if host_is_root() {
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
}

// ---------------------------------------------------------- filesystem

/// Nothing outside /workspace, /files and /tmp is writable, including
/// /proc/sys (the host's kernel.core_pattern stays as it was), /dev, and
/// the running binaries through /proc/self/exe and /proc/1/exe.
#[tokio::test]
async fn writes_outside_the_binds_fail_and_the_host_is_unchanged() {
    let e = escape(1 << 20);
    let core_pattern = std::fs::read("/proc/sys/kernel/core_pattern").unwrap();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let python_before = std::fs::read(&python).unwrap();
    let marker = format!("escape-{}", instance());
    let script = format!(
        r#"
for p in ["/usr/{m}", "/etc/{m}", "/{m}", "/bin/{m}", "/lib/{m}", "/dev/{m}", "/proc/{m}",
          "/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger",
          "/sys/{m}", "/proc/self/exe", "/proc/1/exe"]:
    try:
        with open(p, "wb") as f:
            f.write(b"|/bin/pwned")
        out(p, "WROTE")
    except OSError as err:
        out(p, errno.errorcode.get(err.errno, str(err.errno)))
out("mknod", sc(133, ctypes.c_char_p(b"/tmp/mem"), 0o20600, (1 << 8) | 1))
"#,
        m = marker
    );
    let (out, kv) = e.run_kv(e.py("default", &script)).await;
    assert_eq!(
        out.ending,
        Ending::Exited(0),
        "{}",
        text(&out.result.stderr)
    );
    assert_eq!(kv.len(), 14, "{kv:?}");
    assert!(!kv.values().any(|v| v == "WROTE"), "{kv:?}");
    assert_eq!(kv.get("mknod").map(String::as_str), Some("EPERM"), "{kv:?}");
    for dir in ["/usr", "/etc", "/", "/bin", "/lib"] {
        assert!(
            !Path::new(dir).join(&marker).exists(),
            "{dir}/{marker} exists"
        );
    }
    assert_eq!(
        std::fs::read("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    assert!(
        std::fs::read(&python).unwrap() == python_before,
        "python3 changed"
    );
}

/// /workspace, /tmp and the files root are bounded: the tmpfs mounts fill
/// up (ENOSPC), and a file in /files stops at RLIMIT_FSIZE, so the host's
/// disk is never filled.
#[tokio::test]
async fn disk_fill_stops_at_the_caps() {
    let e = escape(1 << 20);
    // Files below RLIMIT_FSIZE (1 MiB), until the 8 MiB tmpfs is full.
    let fill = |dir: &str| {
        format!(
            "i=0; while [ $i -lt 40 ]; do i=$((i+1)); \
             head -c 900000 /dev/zero > {dir}/fill$i || {{ echo {dir}-full-at=$i; break; }}; done; "
        )
    };
    let script = format!(
        "{}{}head -c 5000000 /dev/zero > /files/fill; echo files=$?; du -sk /workspace /tmp | cut -f1",
        fill("/workspace"),
        fill("/tmp")
    );
    let spec = e.sh("tight", &script);
    let task = spec.task_id;
    let (out, _) = e.h.run(spec).await;
    let stdout = text(&out.result.stdout);
    let stderr = text(&out.result.stderr);
    assert!(
        stdout.contains("/workspace-full-at=") && stdout.contains("/tmp-full-at="),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.matches("No space left on device").count() >= 2,
        "{stderr}"
    );
    // SIGXFSZ: 128 + 25.
    assert!(stdout.contains("files=153\n"), "{stdout}\n{stderr}");
    let sizes: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(sizes.len(), 2, "{stdout}");
    assert!(sizes.iter().all(|kb| *kb <= 8 * 1024), "{sizes:?}");
    let on_host = std::fs::metadata(e.h.files_root().join("acme/fill")).unwrap();
    assert!(
        on_host.len() <= 1 << 20,
        "{} bytes reached the host",
        on_host.len()
    );
    // Nothing of the task or of the pooled sandboxes is on the host's disk.
    assert!(!e.h.sockets().join(task.to_string()).exists());
    for name in e.h.used_pooled() {
        assert!(!e.h.sockets().join(name).exists());
    }
}

// --------------------------------------------------------------- hosts

const SECRET_ENV: &str = "MCP_SANDBOX_IT_SECRET";

/// A secret in the gateway's environment never reaches a sandbox: not in
/// `env`, not in any /proc/*/environ. The test re-runs itself as a child
/// process with the secret in its environment (setting it here would need
/// `unsafe`), and the child prints what the sandbox could see.
#[test]
fn host_env_secrets_never_reach_the_sandbox() {
    if let Ok(secret) = std::env::var(SECRET_ENV) {
        let e = escape(1 << 20);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let script = "env; for f in /proc/[0-9]*/environ /proc/self/environ; do cat $f; echo; done; \
                      grep -ra . /proc/[0-9]*/cmdline; echo hunted";
        let (out, _) = rt.block_on(e.h.run(e.sh("default", script)));
        let seen = text(&out.result.stdout);
        assert!(seen.contains("hunted"), "{seen}");
        assert!(!seen.contains(&secret), "the secret leaked: {seen}");
        println!("SANDBOX-SAW-BYTES={}", seen.len());
        return;
    }
    let secret = format!("s3cret-{}", TaskId::new());
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            test_name("host_env_secrets_never_reach_the_sandbox").as_str(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SECRET_ENV, &secret)
        .output()
        .unwrap();
    let stdout = text(&child.stdout);
    assert!(
        child.status.success(),
        "child failed: {}\n{stdout}\n{}",
        child.status,
        text(&child.stderr)
    );
    assert!(
        stdout.contains("SANDBOX-SAW-BYTES="),
        "the child did not run the hunt: {stdout}"
    );
    assert!(!stdout.contains(&secret), "{stdout}");
}

/// bubblewrap's own command line carries nothing: request env values and
/// host paths reach it through a memfd (`--args`), so neither `ps` on the
/// host nor /proc/1/cmdline inside shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_argv_reveals_neither_env_nor_host_paths() {
    let e = escape(1 << 20);
    let token = format!("tok-{}", TaskId::new());
    let mut spec = e.sh(
        "default",
        "tr '\\0' ' ' < /proc/1/cmdline; echo; echo \"dashes=$DASHES\"; sleep 1",
    );
    spec.env.insert("API_TOKEN".into(), token.clone());
    // A value that looks like bwrap's end of options changes nothing.
    spec.env.insert("DASHES".into(), "--".into());
    let sandbox = e.h.sandbox.clone();
    let run = tokio::spawn(async move {
        let ignore = |_| {};
        sandbox
            .run(spec, &ignore, tokio_util::sync::CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_host = processes_matching(&token);
    let out = run.await.unwrap().unwrap();
    assert!(on_host.is_empty(), "visible on the host: {on_host:?}");
    let cmdline = text(&out.result.stdout);
    assert!(cmdline.contains("--args"), "{cmdline}");
    assert!(cmdline.contains("dashes=--\n"), "{cmdline}");
    assert!(!cmdline.contains(&token), "{cmdline}");
    let files_root = e.h.files_root().display().to_string();
    assert!(!cmdline.contains(&files_root), "{cmdline}");
}

/// Host processes are invisible: only the sandbox's own pid namespace shows
/// in /proc.
#[tokio::test]
async fn host_processes_are_invisible() {
    let e = escape(1 << 20);
    let marker = format!("37.{}1", instance());
    let mut host = Command::new("sleep").arg(&marker).spawn().unwrap();
    let (out, _) = e
        .h
        .run(e.sh(
            "default",
            "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline; echo; done; echo count=$(ls -d /proc/[0-9]* | wc -l)",
        ))
        .await;
    host.kill().unwrap();
    host.wait().unwrap();
    let stdout = text(&out.result.stdout);
    assert!(
        !stdout.contains(&marker),
        "a host process is visible: {stdout}"
    );
    let count: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("count="))
        .unwrap()
        .parse()
        .unwrap();
    // bwrap's init, sh, and the short-lived ls / tr of the loop.
    assert!(count <= 5, "{count} processes visible: {stdout}");
}

/// The host's System V shared memory and abstract unix sockets are not
/// reachable: the sandbox has its own IPC and network namespaces.
#[tokio::test]
async fn host_shm_and_abstract_sockets_are_unreachable() {
    x86_64_only();
    let e = escape(1 << 20);
    let key = 0x4d43_0000 | (instance() & 0xffff);
    // A host shm segment, created by a host python3 and removed at the end.
    struct Shm(String);
    impl Drop for Shm {
        fn drop(&mut self) {
            let _ = Command::new("python3")
                .args([
                    "-c",
                    &format!(
                        "import ctypes; ctypes.CDLL(None).shmctl({}, 0, None)",
                        self.0
                    ),
                ])
                .status();
        }
    }
    let made = Command::new("python3")
        .args([
            "-c",
            &format!("import ctypes; print(ctypes.CDLL(None).shmget({key}, 4096, 0o1666))"),
        ])
        .output()
        .expect("the test needs python3 on the host: apt-get install python3");
    let shm_id = text(&made.stdout).trim().to_owned();
    assert!(
        shm_id.parse::<i64>().is_ok_and(|id| id >= 0),
        "host shmget: {shm_id}"
    );
    let _shm = Shm(shm_id);
    let name = format!("mcp-escape-{}", instance());
    let _listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();

    let script = format!(
        r#"
import socket
libc.shmget.restype = ctypes.c_int
ctypes.set_errno(0)
r = libc.shmget({key}, 0, 0)
out("shmget", "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
out("shm_segments", len(open("/proc/sysvipc/shm").read().splitlines()) - 1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0{name}")
    out("abstract", "connected")
except OSError as err:
    out("abstract", errno.errorcode[err.errno])
"#
    );
    let (out, kv) = e.run_kv(e.py("default", &script)).await;
    expect(
        &kv,
        &out,
        &[
            ("shmget", "ENOENT"),
            ("shm_segments", "0"),
            ("abstract", "ECONNREFUSED"),
        ],
    );
}

/// Without network access the sandbox has only a loopback interface and
/// no route; offline inet sockets (build profile's `loopback`) reach only
/// the sandbox's own loopback.
#[tokio::test]
async fn no_network_means_loopback_only() {
    let e = escape(1 << 20);
    let script = r#"
import socket
out("ifaces", ",".join(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])))
out("routes", len(open("/proc/net/route").read().splitlines()) - 1)
try:
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    c = socket.create_connection(srv.getsockname(), timeout=2)
    out("loopback", "ok")
except OSError as err:
    out("loopback", errno.errorcode[err.errno])
"#;
    let (out, kv) = e.run_kv(e.py("default", script)).await;
    expect(
        &kv,
        &out,
        &[
            ("ifaces", "lo"),
            ("routes", "0"),
            ("loopback", "EAFNOSUPPORT"),
        ],
    );
    let (out, kv) = e.run_kv(e.py("build", script)).await;
    expect(
        &kv,
        &out,
        &[("ifaces", "lo"), ("routes", "0"), ("loopback", "ok")],
    );
}

// -------------------------------------------------------------- limits

/// A fork bomb stops at the task's pids limit, the host can still start
/// processes meanwhile, the timeout ends it, and nothing of it survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_pids_max() {
    let e = escape(1 << 16);
    let marker = format!("38.{}1", instance());
    // Unlike a shell, this bomb shrugs off failed forks and keeps going.
    let script = format!(
        r#"
import time
while True:
    try:
        if os.fork() == 0:
            os.execv("/usr/bin/sleep", ["sleep", "{marker}"])
    except OSError:
        time.sleep(0.001)
"#
    );
    let mut spec = e.py("tight", &script);
    spec.timeout = Duration::from_secs(3);
    let task = spec.task_id;
    let sandbox = e.h.sandbox.clone();
    let run = tokio::spawn(async move {
        let ignore = |_| {};
        sandbox
            .run(spec, &ignore, tokio_util::sync::CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let inside = processes_matching(&format!("sleep {marker}")).len();
    for _ in 0..20 {
        let st = Command::new("true").status().unwrap();
        assert!(
            st.success(),
            "the host cannot start processes during the bomb"
        );
    }
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.ending, Ending::TimedOut);
    assert!(out.limits.pids_max > 0, "{:?}", out.limits);
    assert!(
        (1..=64).contains(&inside),
        "{inside} bomb processes at once"
    );
    assert!(processes_matching(&format!("sleep {marker}")).is_empty());
    e.assert_cgroups_removed(task).await;
}

/// A memory bomb across several processes is OOM-killed at the task's
/// memory limit (the whole task counts, not each process) and ends as
/// `OutOfMemory`.
#[tokio::test]
async fn memory_bomb_is_oom_killed_at_the_task_limit() {
    let e = escape(1 << 20);
    let script = r#"
import time
kids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        b = bytearray(150 * 1024 * 1024)
        time.sleep(10)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
"#;
    let mut spec = e.py("tight", script);
    spec.timeout = Duration::from_secs(30);
    let started = Instant::now();
    let (out, _) = e.h.run(spec).await;
    assert_eq!(
        out.ending,
        Ending::OutOfMemory,
        "{}",
        text(&out.result.stderr)
    );
    assert!(out.limits.oom_kills >= 1, "{:?}", out.limits);
    assert!(started.elapsed() < Duration::from_secs(25));
    let peak = out.result.usage.max_memory_kb;
    assert!(peak <= 256 * 1024 + 1024, "peak {peak} KiB above the limit");
    assert!(peak >= 100 * 1024, "peak {peak} KiB: the bomb did not run");
}

/// Spinning past the CPU-time limit ends as `CpuTimeLimit`, not as a
/// timeout; sleeping past the timeout ends as `TimedOut` with no CPU used.
#[tokio::test]
async fn cpu_time_and_wall_clock_limits_are_distinct() {
    let e = escape(1 << 20);
    let mut spin = e.sh("tight", "while :; do :; done");
    spin.timeout = Duration::from_secs(30);
    let started = Instant::now();
    let (out, _) = e.h.run(spin).await;
    assert_eq!(out.ending, Ending::CpuTimeLimit);
    assert!(started.elapsed() < Duration::from_secs(20));
    let cpu = out.result.usage.cpu_time_ms;
    assert!((1500..6000).contains(&cpu), "cpu {cpu} ms for a 2 s limit");

    let mut sleep = e.sh("tight", "sleep 30");
    sleep.timeout = Duration::from_secs(1);
    let (out, _) = e.h.run(sleep).await;
    assert_eq!(out.ending, Ending::TimedOut);
    assert!(out.result.usage.cpu_time_ms < 500, "{:?}", out.result.usage);
}

/// CPU bandwidth: spinners asking for all cores get what `cpu_limit`
/// grants, and the cgroup says it throttled them.
#[tokio::test]
async fn cpu_spin_is_throttled_to_the_cpu_limit() {
    let e = escape(1 << 20);
    let mut spec = e.sh(
        "default",
        "for i in 1 2 3; do (while :; do :; done) & done; wait",
    );
    spec.timeout = Duration::from_secs(2);
    spec.limits = ResourceLimits {
        cpu_limit: 0.25,
        ..Default::default()
    };
    let (out, _) = e.h.run(spec).await;
    assert_eq!(out.ending, Ending::TimedOut);
    assert!(out.limits.cpu_throttled_periods > 0, "{:?}", out.limits);
    let cpu = out.result.usage.cpu_time_ms;
    let wall = out.result.execution_time_ms;
    // 0.25 of a core over the run, with slack for the first period.
    assert!(
        cpu <= wall / 4 + 300,
        "cpu {cpu} ms in {wall} ms at 0.25 cores"
    );
}

// ------------------------------------------------------------ lifetime

/// A command that exits normally but left `setsid`, subshell and nohup
/// children behind: none of them outlives the task, and its cgroup is gone.
#[tokio::test]
async fn orphans_die_with_their_task() {
    let e = escape(1 << 20);
    let marker = format!("39.{}1", instance());
    let script = format!(
        "setsid sleep {marker} & (sleep {marker} &) ; nohup sleep {marker} >/dev/null 2>&1 & \
         sleep 0.2; echo started"
    );
    let spec = e.sh("default", &script);
    let task = spec.task_id;
    let (out, _) = e.h.run(spec).await;
    assert_eq!(out.ending, Ending::Exited(0));
    assert_eq!(text(&out.result.stdout), "started\n");
    assert!(
        processes_matching(&format!("sleep {marker}")).is_empty(),
        "orphans survived: {:?}",
        processes_matching(&format!("sleep {marker}"))
    );
    e.assert_cgroups_removed(task).await;
}

const STALE_ENV: &str = "MCP_SANDBOX_IT_STALE";

/// A gateway SIGKILLed mid-task cannot clean up; its sandbox dies with it
/// (parent-death signal), and the next gateway to start kills whatever is
/// left in the dead gateway's task cgroups and removes them. The test
/// re-runs itself: once as a gateway that dies mid-task, once as the next
/// gateway.
#[test]
fn the_next_gateway_sweeps_a_dead_gateways_cgroups() {
    if let Ok(role) = std::env::var(STALE_ENV) {
        let e = escape(1 << 10);
        if role == "die" {
            for d in e.h.sandbox.enforcement().cgroup_dirs {
                println!("GW-DIR={}", d.display());
            }
            // This process dies without dropping them; the parent removes them.
            println!("TMP-DIR={}", e.h.tmp.path().display());
            println!("TMP-DIR={}", e._profiles.path().display());
            let spec = e.sh("default", "echo up; sleep 60");
            let rt = tokio::runtime::Runtime::new().unwrap();
            let die = |_| std::process::exit(0);
            let out = rt.block_on(e.h.sandbox.run(
                spec,
                &die,
                tokio_util::sync::CancellationToken::new(),
            ));
            panic!("the task ended before the gateway died: {out:?}");
        }
        // "sweep": starting is all the next gateway has to do.
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let child = |role: &str| {
        Command::new(&exe)
            .args([
                "--exact",
                test_name("the_next_gateway_sweeps_a_dead_gateways_cgroups").as_str(),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STALE_ENV, role)
            .output()
            .unwrap()
    };
    let died = child("die");
    let stdout = text(&died.stdout);
    assert!(died.status.success(), "{stdout}\n{}", text(&died.stderr));
    let gw_dirs: Vec<PathBuf> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("GW-DIR="))
        .map(PathBuf::from)
        .collect();
    assert!(!gw_dirs.is_empty(), "{stdout}");
    let swept = child("sweep");
    for tmp in stdout.lines().filter_map(|l| l.strip_prefix("TMP-DIR=")) {
        let _ = std::fs::remove_dir_all(tmp);
    }
    assert!(swept.status.success(), "{}", text(&swept.stderr));
    for d in gw_dirs {
        assert!(
            !d.exists(),
            "{} survived the next gateway start",
            d.display()
        );
    }
}

/// Flooding both streams at once: each is capped, marked truncated, the
/// command is never blocked on a full pipe, and it completes.
#[tokio::test]
async fn output_flood_on_both_streams_is_capped_and_drained() {
    let e = escape(64 * 1024);
    let script = "head -c 30000000 /dev/zero & head -c 30000000 /dev/zero >&2; wait; echo done >&2";
    let mut spec = e.sh("default", script);
    spec.timeout = Duration::from_secs(60);
    let (out, chunks) = e.h.run(spec).await;
    assert_eq!(out.ending, Ending::Exited(0), "{:?}", out.ending);
    assert_eq!(out.result.stdout.len(), 64 * 1024);
    assert_eq!(out.result.stderr.len(), 64 * 1024);
    assert!(out.result.stdout_truncated && out.result.stderr_truncated);
    let events: Vec<String> = chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Event)
        .map(|c| text(&c.data))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
}

/// Reading a task's own cgroup limits from inside is impossible (no /sys),
/// and the cgroup namespace hides the host's hierarchy.
#[tokio::test]
async fn the_host_cgroup_tree_is_hidden() {
    let e = escape(1 << 20);
    let (out, _) =
        e.h.run(e.sh("default", "cat /proc/self/cgroup; ls /sys 2>&1 | head -1"))
            .await;
    let stdout = text(&out.result.stdout);
    for line in stdout.lines().filter(|l| l.contains(':')) {
        if let Some(path) = line.splitn(3, ':').nth(2) {
            assert!(
                path == "/" || !path.contains("mcp-sandbox"),
                "host cgroup path visible: {stdout}"
            );
        }
    }
    assert!(stdout.contains("No such file or directory"), "{stdout}");
}
