use std::collections::BTreeMap;
use std::ffi::OsString;
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
        workspace: Path::new("/ws/1"),
        files: Path::new("/files/t"),
        masks: &masks,
        cwd: "sub/dir",
        env: BTreeMap::from([("HOME".to_owned(), "/workspace".to_owned())]),
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
            "--proc", "/proc", "--dev", "/dev", "--size", "1024", "--tmpfs", "/tmp",
        ],
        &[
            "--bind",
            "/ws/1",
            "/workspace",
            "--bind",
            "/files/t",
            "/files",
        ],
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
            workspace: Path::new("/w"),
            files: Path::new("/f"),
            masks: &[],
            cwd: "",
            env: BTreeMap::new(),
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
