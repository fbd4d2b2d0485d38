use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_core::ResourceLimits;

use crate::profile::{ByteSize, Profile, is_clean_absolute};
use crate::sandbox::{BwrapArgs, Mask, bwrap_args, effective_limits, is_valid_tenant, merged_env};
use crate::view::{self, Mount, Resolved, View};

const MINIMAL: &str = r#"
description = "test"
[filesystem]
ro_bind = ["/usr"]
tmp_size = "1MiB"
workspace_size = "2MiB"
[limits]
memory = "64MiB"
pids = 16
nofile = 64
fsize = 4096
[env]
PATH = "/usr/bin"
"#;

#[test]
fn minimal_profile_parses_with_defaults() {
    let p = Profile::from_toml("t", MINIMAL).unwrap();
    assert_eq!(p.name, "t");
    assert_eq!(p.filesystem.tmp_size_bytes, 1 << 20);
    assert_eq!(p.limits.memory_bytes, 64 << 20);
    assert_eq!(p.limits.fsize_bytes, 4096);
    assert!(!p.network.allow_host);
    assert!(p.filesystem.ro_bind_try.is_empty());
}

#[test]
fn unknown_fields_are_refused() {
    let text = MINIMAL.replace("ro_bind = ", "ro_binds = ");
    let err = Profile::from_toml("t", &text).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(err[0].contains("ro_binds"), "{err:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL
        .replace(
            r#"ro_bind = ["/usr"]"#,
            r#"ro_bind = ["usr", "/", "/tmp/x", "/a/../b", "/usr/"]"#,
        )
        .replace("pids = 16", "pids = 0")
        .replace(r#"tmp_size = "1MiB""#, "tmp_size = 0")
        .replace(r#"PATH = "/usr/bin""#, r#"PATH = "/usr/bin:bin""#);
    let err = Profile::from_toml("Bad.Name", &text).unwrap_err();
    let all = err.join("\n");
    for needle in [
        "profile name",
        "\"usr\"",
        "\"/\"",
        "\"/tmp/x\"",
        "\"/a/../b\"",
        "\"/usr/\"",
        "limits.pids",
        "tmp_size",
        "env.PATH entry \"bin\"",
    ] {
        assert!(all.contains(needle), "missing {needle}: {all}");
    }
    assert_eq!(err.len(), 9, "{all}");
}

#[test]
fn missing_path_and_duplicates_are_refused() {
    let text = MINIMAL
        .replace(r#"PATH = "/usr/bin""#, r#"HOME = "/workspace""#)
        .replace(
            r#"ro_bind = ["/usr"]"#,
            "ro_bind = [\"/usr\"]\nro_bind_try = [\"/usr\"]",
        );
    let err = Profile::from_toml("t", &text).unwrap_err();
    assert!(err.iter().any(|e| e == "env.PATH must be set"), "{err:?}");
    assert!(err.iter().any(|e| e.contains("more than once")), "{err:?}");
}

#[test]
fn sizes_parse_with_binary_units() {
    assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
    assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
    assert_eq!(ByteSize::parse("1G"), Ok(ByteSize(1 << 30)));
    assert_eq!(ByteSize::parse(" 2 KiB "), Ok(ByteSize(2048)));
    assert!(ByteSize::parse("1MB").is_err());
    assert!(ByteSize::parse("MiB").is_err());
    assert!(ByteSize::parse("99999999999TiB").is_err());
    let neg = MINIMAL.replace("fsize = 4096", "fsize = -1");
    let err = Profile::from_toml("t", &neg).unwrap_err();
    assert!(err[0].contains("must not be negative"), "{err:?}");
}

#[test]
fn clean_absolute_paths() {
    for ok in ["/", "/usr", "/etc/ssl/certs"] {
        assert!(is_clean_absolute(ok), "{ok}");
    }
    for bad in [
        "",
        "usr",
        "/usr/",
        "//usr",
        "/usr/./bin",
        "/usr/../etc",
        "/a\0b",
    ] {
        assert!(!is_clean_absolute(bad), "{bad:?}");
    }
}

#[test]
fn tenant_names() {
    assert!(is_valid_tenant("acme_corp-1"));
    assert!(is_valid_tenant(&"a".repeat(64)));
    for bad in ["", ".", "..", "a/b", "a b", ".hidden", &"a".repeat(65)] {
        assert!(!is_valid_tenant(bad), "{bad:?}");
    }
}

#[test]
fn request_limits_only_tighten() {
    let p = Profile::from_toml("t", MINIMAL).unwrap();
    let none = effective_limits(&p, &ResourceLimits::default(), Duration::from_secs(10));
    assert_eq!(none.address_space, 64 << 20);
    assert_eq!(none.nproc, 16);
    assert_eq!(none.cpu_secs, 11);
    let lower = ResourceLimits {
        memory_bytes: 32 << 20,
        pids: 8,
        ..Default::default()
    };
    let l = effective_limits(&p, &lower, Duration::from_millis(1500));
    assert_eq!((l.address_space, l.nproc, l.cpu_secs), (32 << 20, 8, 3));
    let higher = ResourceLimits {
        memory_bytes: 1 << 40,
        pids: 100_000,
        ..Default::default()
    };
    let h = effective_limits(&p, &higher, Duration::from_secs(1));
    assert_eq!((h.address_space, h.nproc), (64 << 20, 16));
}

#[test]
fn request_env_goes_on_top_of_profile_env() {
    let p = Profile::from_toml("t", MINIMAL).unwrap();
    let req = BTreeMap::from([
        ("PATH".to_owned(), "/x".to_owned()),
        ("FOO".to_owned(), "1".to_owned()),
    ]);
    let env = merged_env(&p, &req);
    assert_eq!(env.get("PATH").map(String::as_str), Some("/x"));
    assert_eq!(env.get("FOO").map(String::as_str), Some("1"));
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn window(args: &[OsString], needle: &[&str]) -> bool {
    let needle = os(needle);
    args.windows(needle.len()).any(|w| w == needle.as_slice())
}

#[test]
fn bwrap_args_have_isolation_mounts_and_argv_last() {
    let mounts = vec![
        Mount::Bind {
            path: "/usr".into(),
            host: "/usr".into(),
            required: true,
        },
        Mount::Symlink {
            path: "/bin".into(),
            target: "usr/bin".into(),
        },
        Mount::Bind {
            path: "/etc/passwd".into(),
            host: "/etc/passwd".into(),
            required: false,
        },
    ];
    let masks = vec![
        Mask::Dir("/usr/share".into()),
        Mask::File("/etc/passwd".into()),
    ];
    let argv = vec!["/usr/bin/echo".to_owned(), "--share-net".to_owned()];
    let args = bwrap_args(&BwrapArgs {
        mounts: &mounts,
        share_net: false,
        tmp_size: 1024,
        workspace_size: 4096,
        seccomp_fd: 7,
        files: Path::new("/files/t"),
        masks: &masks,
        cwd: "sub/dir",
        env: BTreeMap::from([("HOME".to_owned(), "/workspace".to_owned())]),
        egress: None,
        argv: &argv,
    });
    for w in [
        &["--unshare-all", "--unshare-user", "--disable-userns"][..],
        &[
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
            "ALL",
        ],
        &["--hostname", "sandbox"],
        &["--ro-bind", "/usr", "/usr"],
        &["--symlink", "usr/bin", "/bin"],
        &["--ro-bind-try", "/etc/passwd", "/etc/passwd"],
        &[
            "--proc", "/proc", "--dev", "/dev", "--size", "1024", "--tmpfs", "/dev/shm",
        ],
        &["--size", "1024", "--tmpfs", "/tmp"],
        &[
            "--remount-ro",
            "/dev",
            "--remount-ro",
            "/",
            "--chdir",
            "/workspace/sub/dir",
        ],
        &[
            "--perms",
            "0700",
            "--size",
            "4096",
            "--tmpfs",
            "/workspace",
            "--bind",
            "/files/t",
            "/files",
        ],
        &["--dir", "/workspace/sub", "--dir", "/workspace/sub/dir"],
        &["--seccomp", "7", "--"],
        &["--tmpfs", "/usr/share", "--remount-ro", "/usr/share"],
        &["--ro-bind", "/dev/null", "/etc/passwd"],
        &["--chdir", "/workspace/sub/dir"],
        &["--setenv", "HOME", "/workspace"],
        &["--", "/usr/bin/echo", "--share-net"],
    ] {
        assert!(window(&args, w), "missing {w:?} in {args:?}");
    }
    // The command's own "--share-net" is after "--", never an option.
    let dashdash = args.iter().position(|a| a == "--").unwrap();
    assert_eq!(
        args.iter().position(|a| a == "--share-net"),
        Some(dashdash + 2)
    );
    // Masks come after every other mount.
    let mask_at = args.iter().rposition(|a| a == "/dev/null").unwrap();
    let files_at = args.iter().position(|a| a == "/files").unwrap();
    assert!(mask_at > files_at);
}

#[test]
fn share_net_only_when_asked() {
    let mk = |share_net| {
        bwrap_args(&BwrapArgs {
            mounts: &[],
            share_net,
            tmp_size: 1,
            workspace_size: 1,
            seccomp_fd: 3,
            files: Path::new("/f"),
            masks: &[],
            cwd: "",
            env: BTreeMap::new(),
            egress: None,
            argv: &["/x".to_owned()],
        })
    };
    assert!(!mk(false).iter().any(|a| a == "--share-net"));
    assert!(mk(true).iter().any(|a| a == "--share-net"));
    assert!(window(&mk(false), &["--chdir", "/workspace"]));
}

/// A fake host: `root/usr/bin/{tool,data}`, `root/etc/conf`, links.
fn fake_host() -> (tempfile::TempDir, View) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("secret")).unwrap();
    std::fs::write(r.join("secret/key"), "k").unwrap();
    std::fs::write(r.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        r.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(r.join("usr/bin/data"), "").unwrap();
    symlink("tool", r.join("usr/bin/alias")).unwrap();
    // Host-absolute links are interpreted inside the sandbox, never on the host.
    symlink(r.join("secret/key"), r.join("usr/bin/hostlink")).unwrap();
    symlink("../../../../../../secret/key", r.join("usr/bin/climb")).unwrap();
    symlink("loop", r.join("usr/bin/loop")).unwrap();
    std::fs::write(r.join("etc/conf"), "").unwrap();
    let view = View::for_test(
        vec![
            (PathBuf::from("/usr"), r.join("usr")),
            (PathBuf::from("/etc/conf"), r.join("etc/conf")),
        ],
        vec![(PathBuf::from("/bin"), PathBuf::from("usr/bin"))],
    );
    (t, view)
}

#[test]
fn view_follows_links_in_sandbox_space() {
    let (_t, v) = fake_host();
    let file = |p: &str| match v.resolve(Path::new(p)) {
        Resolved::File(at, _) => Some(at),
        _ => None,
    };
    assert_eq!(file("/usr/bin/tool"), Some("/usr/bin/tool".into()));
    assert_eq!(file("/bin/tool"), Some("/usr/bin/tool".into()));
    assert_eq!(file("/bin/alias"), Some("/usr/bin/tool".into()));
    assert_eq!(file("/etc/conf"), Some("/etc/conf".into()));
    assert!(matches!(v.resolve(Path::new("/etc")), Resolved::Dir(p) if p == Path::new("/etc")));
    assert!(matches!(v.resolve(Path::new("/bin")), Resolved::Dir(p) if p == Path::new("/usr/bin")));
    for missing in [
        "/usr/bin/hostlink",
        "/usr/bin/climb",
        "/usr/bin/loop",
        "/usr/bin/nope",
        "/etc/other",
        "/secret/key",
        "/usr/bin/tool/x",
    ] {
        assert!(
            matches!(v.resolve(Path::new(missing)), Resolved::Missing),
            "{missing}"
        );
    }
}

#[test]
fn plan_turns_merged_usr_links_into_symlinks() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    symlink("usr/bin", r.join("bin")).unwrap();
    std::fs::create_dir_all(r.join("elsewhere")).unwrap();
    symlink(r.join("elsewhere"), r.join("other")).unwrap();
    let fs = crate::profile::FilesystemPolicy {
        ro_bind: vec![r.join("usr")],
        ro_bind_try: vec![r.join("bin"), r.join("other"), r.join("absent")],
        tmp_size_bytes: 1,
        workspace_size_bytes: 1,
    };
    let plan = view::plan(&fs);
    assert_eq!(plan.len(), 3, "{plan:?}");
    assert!(plan.contains(&Mount::Symlink {
        path: r.join("bin"),
        target: "usr/bin".into()
    }));
    // A link to an unbound place is bound, so its content is visible.
    assert!(plan.contains(&Mount::Bind {
        path: r.join("other"),
        host: std::fs::canonicalize(r.join("elsewhere")).unwrap(),
        required: false
    }));
}

// ------------------------------------------------------------- seccomp

#[test]
fn complement_blocks_cover_everything_but_the_points_exactly_once() {
    use crate::seccomp::{DENIED_IOCTLS, complement};
    let check = |points: &[u32], samples: &[u32]| {
        let blocks = complement(points);
        assert!(blocks.len() <= 32 * points.len(), "{}", blocks.len());
        for &x in samples {
            let hits = blocks
                .iter()
                .filter(|(m, v)| u64::from(x) & m == *v)
                .count();
            let want = usize::from(!points.contains(&x));
            assert_eq!(hits, want, "x = {x:#x}, points {points:x?}");
        }
    };
    // Around the points, bit flips of them, and a spread of other values.
    let mut samples: Vec<u32> = vec![0, 1, u32::MAX, 0x8000_0000, 0x5400, 0x541f];
    for p in DENIED_IOCTLS.iter().chain(&[0u32, u32::MAX]) {
        samples.extend((0..32).map(|b| p ^ (1 << b)));
        samples.extend([p.wrapping_sub(1), *p, p.wrapping_add(1)]);
    }
    let mut x: u32 = 0x1234_5678;
    for _ in 0..20_000 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        samples.push(x);
    }
    check(&DENIED_IOCTLS, &samples);
    check(&[0, u32::MAX], &samples);
    check(&[42], &samples);
}

#[test]
fn seccomp_filters_compile_for_both_families_and_extra_denials() {
    use crate::seccomp::{Families, ProfileFilters, build};
    let f = ProfileFilters::build(&[]).unwrap();
    let (unix, inet) = (f.get(Families::UnixOnly), f.get(Families::WithInet));
    // Whole sock_filter instructions, and different socket rules.
    assert!(!unix.is_empty() && unix.len() % 8 == 0);
    assert_ne!(unix, inet);
    let denied = build(
        Families::UnixOnly,
        &["socket".to_owned(), "ioctl".to_owned()],
    )
    .unwrap();
    assert_ne!(denied, unix);
}

#[test]
fn profile_seccomp_deny_names_must_be_syscalls() {
    let text = format!("{MINIMAL}\n[seccomp]\ndeny = [\"ptrace\", \"no_such_call\"]\n")
        .replace("[env]\nPATH = \"/usr/bin\"\n", "")
        + "[env]\nPATH = \"/usr/bin\"\n";
    let err = Profile::from_toml("t", &text).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("no_such_call"), "{err:?}");
    let ok = text.replace(", \"no_such_call\"", "");
    assert_eq!(
        Profile::from_toml("t", &ok).unwrap().seccomp.deny,
        vec!["ptrace"]
    );
}

// -------------------------------------------------------------- limits

#[test]
fn new_limit_fields_parse_and_validate() {
    let p = Profile::from_toml("t", MINIMAL).unwrap();
    assert_eq!(p.filesystem.workspace_size_bytes, 2 << 20);
    assert_eq!(
        (
            p.limits.cpu_millicores,
            p.limits.cpu_time_secs,
            p.limits.io_weight
        ),
        (None, None, None)
    );
    assert!(p.limits.require_cgroup);
    assert!(!p.network.allow_restricted && !p.network.loopback);

    let text = MINIMAL.replace(
        "fsize = 4096",
        "fsize = 4096\ncpus = 1.5\ncpu_time_secs = 9\nio_weight = 50\nrequire_cgroup = false",
    );
    let p = Profile::from_toml("t", &text).unwrap();
    assert_eq!(p.limits.cpu_millicores, Some(1500));
    assert_eq!(p.limits.cpu_time_secs, Some(9));
    assert_eq!(p.limits.io_weight, Some(50));
    assert!(!p.limits.require_cgroup);

    let bad = MINIMAL
        .replace(
            "fsize = 4096",
            "fsize = 4096\ncpus = 0.0\ncpu_time_secs = 0\nio_weight = 0",
        )
        .replace(r#"workspace_size = "2MiB""#, "workspace_size = 0");
    let err = Profile::from_toml("t", &bad).unwrap_err();
    let all = err.join("\n");
    for needle in [
        "limits.cpus",
        "cpu_time_secs",
        "io_weight",
        "workspace_size",
    ] {
        assert!(all.contains(needle), "missing {needle}: {all}");
    }
    // allow_host implies restricted (tighter) access.
    let host = MINIMAL.replace("[limits]", "[network]\nallow_host = true\n[limits]");
    assert!(
        Profile::from_toml("t", &host)
            .unwrap()
            .network
            .allow_restricted
    );
}

#[test]
fn cgroup_limits_only_tighten() {
    use crate::sandbox::cgroup_limits;
    let text = MINIMAL.replace("fsize = 4096", "fsize = 4096\ncpus = 2.0\nio_weight = 200");
    let p = Profile::from_toml("t", &text).unwrap();
    let none = cgroup_limits(&p, &ResourceLimits::default());
    assert_eq!(
        (
            none.memory_bytes,
            none.pids,
            none.cpu_millicores,
            none.io_weight
        ),
        (64 << 20, 16, Some(2000), Some(200))
    );
    let lower = ResourceLimits {
        cpu_limit: 0.5,
        memory_bytes: 32 << 20,
        pids: 8,
        io_weight: 10,
    };
    let l = cgroup_limits(&p, &lower);
    assert_eq!(
        (l.memory_bytes, l.pids, l.cpu_millicores, l.io_weight),
        (32 << 20, 8, Some(500), Some(10))
    );
    let higher = ResourceLimits {
        cpu_limit: 64.0,
        memory_bytes: 1 << 40,
        pids: 100_000,
        io_weight: 10_000,
    };
    let h = cgroup_limits(&p, &higher);
    assert_eq!(
        (h.memory_bytes, h.pids, h.cpu_millicores, h.io_weight),
        (64 << 20, 16, Some(2000), Some(200))
    );
    // A NaN or negative request changes nothing.
    let junk = ResourceLimits {
        cpu_limit: f32::NAN,
        ..Default::default()
    };
    assert_eq!(cgroup_limits(&p, &junk).cpu_millicores, Some(2000));
}

#[test]
fn rlimit_cpu_is_the_lower_of_cpu_time_and_timeout() {
    let text = MINIMAL.replace("fsize = 4096", "fsize = 4096\ncpu_time_secs = 5");
    let p = Profile::from_toml("t", &text).unwrap();
    let r = |t| effective_limits(&p, &ResourceLimits::default(), Duration::from_secs(t)).cpu_secs;
    assert_eq!((r(2), r(5), r(60)), (3, 6, 6));
}

#[test]
fn endings_are_classified_by_what_the_cgroup_saw() {
    use crate::cgroup::CgroupStats;
    use crate::run::{Ending, RunLimits, classify};
    use mcp_core::ResourceUsage;
    let limits = RunLimits {
        timeout: Duration::from_secs(30),
        cpu_time: Some(Duration::from_secs(5)),
        rlimit_cpu_secs: 6,
    };
    let usage = |ms| ResourceUsage {
        cpu_time_ms: ms,
        ..Default::default()
    };
    let oom = CgroupStats {
        oom_kills: 1,
        ..Default::default()
    };
    let none = CgroupStats::default();
    assert_eq!(
        classify(Ending::Exited(0), &oom, &usage(0), &limits),
        Ending::OutOfMemory
    );
    assert_eq!(
        classify(Ending::Exited(137), &none, &usage(5900), &limits),
        Ending::CpuTimeLimit
    );
    assert_eq!(
        classify(
            Ending::Exited(128 + libc::SIGXCPU),
            &none,
            &usage(5100),
            &limits
        ),
        Ending::CpuTimeLimit
    );
    // Killed early, or a plain failure: not a CPU-time kill.
    assert_eq!(
        classify(Ending::Exited(137), &none, &usage(100), &limits),
        Ending::Exited(137)
    );
    assert_eq!(
        classify(Ending::Exited(1), &none, &usage(9000), &limits),
        Ending::Exited(1)
    );
}

// -------------------------------------------------------------- cgroups

const MOUNTINFO_HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 31 0:32 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 31 0:33 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
";
const SELF_HYBRID: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
4:memory:/jobs/j1
2:cpuacct:/
1:cpu:/
0::/
";

#[test]
fn hybrid_hosts_use_v1_hierarchies_at_our_own_cgroup() {
    use crate::cgroup::{Plan, plan};
    // The fake unified mount has no cgroup.controllers file, like a v2
    // hierarchy whose controllers are all bound to v1.
    let Plan::V1(h) = plan(MOUNTINFO_HYBRID, SELF_HYBRID).unwrap() else {
        panic!("expected v1");
    };
    let dirs: Vec<(Vec<String>, PathBuf)> = h.into_iter().map(|(c, _, _, _, d)| (c, d)).collect();
    assert_eq!(
        dirs,
        vec![
            (
                vec!["memory".to_owned()],
                PathBuf::from("/sys/fs/cgroup/memory/jobs/j1")
            ),
            (
                vec!["pids".to_owned()],
                PathBuf::from("/sys/fs/cgroup/pids/")
            ),
            (vec!["cpu".to_owned()], PathBuf::from("/sys/fs/cgroup/cpu/")),
            (
                vec!["cpuacct".to_owned()],
                PathBuf::from("/sys/fs/cgroup/cpuacct/")
            ),
            (
                vec!["blkio".to_owned()],
                PathBuf::from("/sys/fs/cgroup/blkio/")
            ),
        ]
    );
}

#[test]
fn comounted_v1_controllers_share_one_hierarchy() {
    use crate::cgroup::{Plan, plan};
    let mountinfo = "\
33 31 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 31 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
    let own = "4:cpu,cpuacct:/a\n3:memory:/a\n2:pids:/a\n";
    let Plan::V1(h) = plan(mountinfo, own).unwrap() else {
        panic!("expected v1");
    };
    assert_eq!(h.len(), 3);
    let cpu = h.iter().find(|e| e.0.contains(&"cpu".to_owned())).unwrap();
    assert_eq!(cpu.0, vec!["cpu".to_owned(), "cpuacct".to_owned()]);
    assert_eq!(cpu.1, "cpu,cpuacct");
    assert_eq!(cpu.4, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a"));
}

#[test]
fn pure_v2_with_controllers_is_preferred() {
    use crate::cgroup::{Plan, plan};
    let t = tempfile::tempdir().unwrap();
    let own = t.path().join("system.slice/gw.service");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(
        own.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    let mountinfo = format!(
        "30 25 0:26 / {} rw - cgroup2 cgroup2 rw\n",
        t.path().display()
    );
    let Plan::V2 {
        own: dir,
        controllers,
        own_path,
        ..
    } = plan(&mountinfo, "0::/system.slice/gw.service\n").unwrap()
    else {
        panic!("expected v2");
    };
    assert_eq!(dir, own);
    assert_eq!(own_path, "/system.slice/gw.service");
    assert_eq!(controllers, vec!["memory", "pids", "cpu", "io"]);

    // A v2 hierarchy without pids, and no v1: unavailable, saying why.
    std::fs::write(own.join("cgroup.controllers"), "cpu memory\n").unwrap();
    let err = plan(&mountinfo, "0::/system.slice/gw.service\n").unwrap_err();
    assert!(err.contains("does not offer pids"), "{err}");
    assert!(err.contains("cgroup v1 has no usable hierarchy"), "{err}");
}

#[test]
fn cgroup_key_value_files_parse() {
    use crate::cgroup::keyed;
    let stat = "usage_usec 1234567\nuser_usec 1\nnr_throttled 7\n";
    assert_eq!(keyed(stat, "usage_usec"), Some(1_234_567));
    assert_eq!(keyed(stat, "nr_throttled"), Some(7));
    assert_eq!(keyed("max 3\n", "max"), Some(3));
    assert_eq!(
        keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
        Some(2)
    );
    assert_eq!(keyed(stat, "missing"), None);
}

#[test]
fn a_large_mount_table_is_flagged_with_what_it_costs() {
    use crate::host::{MANY_MOUNTS, mount_table};
    let small = mount_table(Some(20), None);
    assert!(small.ok);
    assert_eq!(small.detail, "20 mounts");
    assert!(mount_table(Some(MANY_MOUNTS), None).ok);
    let large = mount_table(Some(MANY_MOUNTS + 1), None);
    assert!(!large.ok);
    assert!(
        large
            .detail
            .starts_with("201 mounts: every sandbox start reads them")
    );
    assert!(large.detail.contains("lean mount namespace"));
    // Started from a lean namespace, the host's table does not matter.
    let lean = mount_table(Some(900), Some(14));
    assert!(lean.ok);
    assert_eq!(
        lean.detail,
        "900 mounts; bubblewrap starts in a lean namespace of 14 mounts"
    );
    assert!(!mount_table(None, Some(14)).ok);
}

#[test]
fn bwrap_versions_parse() {
    use crate::host::parse_bwrap_version;
    assert_eq!(parse_bwrap_version("bubblewrap 0.8.0"), Some((0, 8)));
    assert_eq!(parse_bwrap_version("bubblewrap 0.11.1\n"), Some((0, 11)));
    assert_eq!(parse_bwrap_version("nonsense"), None);
}

/// cgroup v2 cannot be exercised for real on a hybrid host; this checks
/// the files and formats written and read against a fake cgroupfs.
#[test]
fn v2_task_cgroup_files_on_a_fake_cgroupfs() {
    use crate::cgroup::{CgroupLimits, CgroupMode, TaskCgroup};
    let t = tempfile::tempdir().unwrap();
    let d = t.path().to_path_buf();
    for f in [
        "memory.max",
        "memory.swap.max",
        "memory.oom.group",
        "pids.max",
        "cpu.max",
        "io.weight",
        "cgroup.procs",
    ] {
        std::fs::write(d.join(f), "").unwrap();
    }
    let cg = TaskCgroup::for_test(
        CgroupMode::V2,
        vec![(vec!["memory", "pids", "cpu", "io"], d.clone())],
    );
    cg.write_limits_for_test(&CgroupLimits {
        memory_bytes: 256 << 20,
        pids: 64,
        cpu_millicores: Some(500),
        io_weight: Some(50),
    })
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read("memory.max"), "268435456");
    assert_eq!(read("memory.swap.max"), "0");
    assert_eq!(read("memory.oom.group"), "1");
    assert_eq!(read("pids.max"), "64");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("io.weight"), "default 50");

    std::fs::write(d.join("cpu.stat"), "usage_usec 2500000\nnr_throttled 3\n").unwrap();
    std::fs::write(d.join("memory.peak"), "104857600\n").unwrap();
    std::fs::write(
        d.join("memory.events"),
        "low 0\nhigh 0\nmax 5\noom 1\noom_kill 2\n",
    )
    .unwrap();
    std::fs::write(d.join("pids.events"), "max 7\n").unwrap();
    std::fs::write(
        d.join("io.stat"),
        "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2 rios=1 wios=1\n",
    )
    .unwrap();
    let s = cg.stats();
    assert_eq!(s.cpu_ms, Some(2500));
    assert_eq!(s.peak_memory_bytes, Some(100 << 20));
    assert_eq!((s.io_read_bytes, s.io_write_bytes), (Some(101), Some(202)));
    assert_eq!(
        (s.oom_kills, s.pids_max_hits, s.cpu_throttled_periods),
        (2, 7, 3)
    );
    // A spawn is cloned into the task cgroup's directory (nothing written
    // to cgroup.procs; sys's tests clone into a real v2 cgroup).
    match cg.join().unwrap() {
        crate::sys::CgroupJoin::Into(dir) => {
            let at = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).unwrap();
            assert_eq!(at, d);
        }
        other => panic!("a v2 task cgroup is joined by clone3 into it, not {other:?}"),
    }
    // An empty cgroup is removed (rmdir; a real empty directory here).
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::create_dir(&d).unwrap();
    cg.destroy();
    assert!(!d.exists());
}

#[test]
fn v1_task_cgroup_files_on_a_fake_cgroupfs() {
    use crate::cgroup::{CgroupLimits, CgroupMode, TaskCgroup};
    let t = tempfile::tempdir().unwrap();
    let dir = |name: &str, files: &[&str]| {
        let d = t.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), "").unwrap();
        }
        d
    };
    let mem = dir(
        "memory",
        &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
    );
    let pids = dir("pids", &["pids.max"]);
    let cpu = dir("cpu", &["cpu.cfs_period_us", "cpu.cfs_quota_us"]);
    let acct = dir("cpuacct", &[]);
    let blkio = dir("blkio", &["blkio.weight"]);
    let cg = TaskCgroup::for_test(
        CgroupMode::V1,
        vec![
            (vec!["memory"], mem.clone()),
            (vec!["pids"], pids.clone()),
            (vec!["cpu"], cpu.clone()),
            (vec!["cpuacct"], acct.clone()),
            (vec!["blkio"], blkio.clone()),
        ],
    );
    cg.write_limits_for_test(&CgroupLimits {
        memory_bytes: 1 << 30,
        pids: 256,
        cpu_millicores: Some(1500),
        io_weight: Some(100),
    })
    .unwrap();
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "1073741824");
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "1073741824");
    assert_eq!(read(&pids, "pids.max"), "256");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "150000");
    assert_eq!(read(&blkio, "blkio.weight"), "500");
    // A spawn writes itself into every hierarchy's `tasks` (opened here,
    // so each must exist).
    for d in [&mem, &pids, &cpu, &acct, &blkio] {
        std::fs::write(d.join("tasks"), "").unwrap();
    }
    match cg.join().unwrap() {
        crate::sys::CgroupJoin::Write(files) => {
            let opened: Vec<PathBuf> = files
                .iter()
                .map(|f| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap())
                .collect();
            let tasks: Vec<PathBuf> = [&mem, &pids, &cpu, &acct, &blkio]
                .iter()
                .map(|d| d.join("tasks"))
                .collect();
            assert_eq!(opened, tasks);
        }
        other => panic!("v1 task cgroups are joined through `tasks`, not {other:?}"),
    }

    std::fs::write(acct.join("cpuacct.usage"), "3000000000\n").unwrap();
    std::fs::write(mem.join("memory.max_usage_in_bytes"), "2097152\n").unwrap();
    std::fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    )
    .unwrap();
    std::fs::write(
        blkio.join("blkio.throttle.io_service_bytes_recursive"),
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
    )
    .unwrap();
    let s = cg.stats();
    assert_eq!(s.cpu_ms, Some(3000));
    assert_eq!(s.peak_memory_bytes, Some(2 << 20));
    assert_eq!(
        (s.io_read_bytes, s.io_write_bytes),
        (Some(4096), Some(8192))
    );
    assert_eq!(s.oom_kills, 1);
}

#[test]
fn restricted_runs_bind_the_proxy_socket_and_forwarder_before_the_root_goes_read_only() {
    let egress = crate::EgressBinding {
        socket: "/srv/ws/t.egress.sock".into(),
        forwarder: "/usr/bin/mcp-gateway".into(),
    };
    let argv = vec!["/run/mcp-egress/forward".to_owned()];
    let args = bwrap_args(&BwrapArgs {
        mounts: &[],
        share_net: false,
        tmp_size: 1024,
        workspace_size: 4096,
        seccomp_fd: 7,
        files: Path::new("/files/t"),
        masks: &[],
        cwd: "",
        env: BTreeMap::new(),
        egress: Some(&egress),
        argv: &argv,
    });
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = |w: &[&str]| {
        args.windows(w.len())
            .position(|x| x == w)
            .unwrap_or_else(|| panic!("{w:?} not in {args:?}"))
    };
    let fwd = at(&[
        "--ro-bind",
        "/usr/bin/mcp-gateway",
        "/run/mcp-egress/forward",
    ]);
    let sock = at(&[
        "--ro-bind",
        "/srv/ws/t.egress.sock",
        "/run/mcp-egress/proxy.sock",
    ]);
    let ro = at(&["--remount-ro", "/"]);
    assert!(fwd < ro && sock < ro, "{args:?}");
    // Still no host network.
    assert!(!args.iter().any(|a| a == "--share-net"));
}

/// Destroying a task cgroup kills what is still inside and waits for it to
/// leave (on pidfds, not sleeps) before removing the directory: a real v2
/// cgroup (this host's `unified` mount) holding two processes, one of them
/// in a new session of its own, as a command escaping bwrap's process
/// group would be. Like every sandbox test, this needs root.
#[test]
fn destroying_a_task_cgroup_kills_and_waits_for_everything_inside() {
    use crate::cgroup::{CgroupMode, TaskCgroup};
    use crate::join_bench::ScratchV2Cgroup;
    use crate::sys::{self, CgroupJoin, ChildSetup, Spawn};
    assert_eq!(sys::geteuid(), 0, "the sandbox tests run as root");
    let scratch = ScratchV2Cgroup::new("destroy-test").unwrap();
    let children: Vec<i32> = [vec!["100"], vec!["-c", "setsid sleep 100 & wait"]]
        .into_iter()
        .zip(["/bin/sleep", "/bin/sh"])
        .map(|(args, program)| {
            let setup = ChildSetup {
                cgroup: CgroupJoin::Into(scratch.open().unwrap()),
                ..ChildSetup::none()
            };
            Spawn::new(Path::new(program), args, setup)
                .unwrap()
                .spawn()
                .unwrap()
                .pid
        })
        .collect();
    let procs = scratch.dir.join("cgroup.procs");
    let listed = || std::fs::read_to_string(&procs).unwrap_or_default();
    // The shell's setsid child is in there too, once it started.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listed().lines().count() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", listed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let task = TaskCgroup::for_test(CgroupMode::V2, vec![(Vec::new(), scratch.dir.clone())]);
    task.destroy();
    assert!(
        !scratch.dir.exists(),
        "the cgroup was not emptied and removed: {}",
        listed()
    );
    for pid in children {
        let status = sys::reap(pid).unwrap().status;
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "{status}"
        );
    }
}
