use std::time::Duration;

use super::*;

fn req(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: cmd.to_owned(),
        ..Default::default()
    }
}

#[test]
fn valid_request_gets_default_timeout_and_empty_cwd() {
    let v = req("echo").validate(&RequestLimits::default()).unwrap();
    assert_eq!(v.timeout, Duration::from_secs(30));
    assert_eq!(v.cwd, "");
}

#[test]
fn empty_command_is_refused() {
    assert_eq!(
        req("  ").validate(&RequestLimits::default()),
        Err(ValidationError::EmptyCommand)
    );
}

#[test]
fn nul_bytes_are_refused_with_field_name() {
    let mut r = req("echo");
    r.args = vec!["ok".into(), "a\0b".into()];
    let err = r.validate(&RequestLimits::default()).unwrap_err();
    assert_eq!(err.to_string(), "args[1] contains a NUL byte");

    let mut r = req("echo");
    r.env.insert("X".into(), "a\0".into());
    let err = r.validate(&RequestLimits::default()).unwrap_err();
    assert_eq!(err.to_string(), "env[X] contains a NUL byte");
}

#[test]
fn oversized_args_and_env_are_refused() {
    let limits = RequestLimits {
        max_args_bytes: 10,
        max_env: 1,
        ..Default::default()
    };
    let mut r = req("echo");
    r.args = vec!["0123456789ab".into()];
    assert!(matches!(
        r.validate(&limits),
        Err(ValidationError::TooLong { field, .. }) if field == "args"
    ));
    let mut r = req("echo");
    r.env.insert("A".into(), "1".into());
    r.env.insert("B".into(), "2".into());
    assert!(matches!(
        r.validate(&limits),
        Err(ValidationError::TooMany { field, count: 2, max: 1 }) if field == "env"
    ));
}

#[test]
fn bad_env_names_are_refused() {
    for name in ["", "1X", "A=B", "A-B", "A B"] {
        let mut r = req("echo");
        r.env.insert(name.into(), "v".into());
        assert_eq!(
            r.validate(&RequestLimits::default()),
            Err(ValidationError::BadEnvName { name: name.into() }),
            "{name:?}"
        );
    }
}

#[test]
fn cwd_is_confined_to_the_workspace() {
    for (cwd, want) in [
        ("sub/dir", Some("sub/dir")),
        ("./a/./b/", Some("a/b")),
        ("/workspace", Some("")),
        ("/workspace/x", Some("x")),
        ("/workspacefoo", None),
        ("/etc", None),
        ("../x", None),
        ("a/../../b", None),
        ("/workspace/../etc", None),
    ] {
        let mut r = req("ls");
        r.cwd = Some(cwd.into());
        let got = r.validate(&RequestLimits::default());
        match want {
            Some(w) => assert_eq!(got.unwrap().cwd, w, "{cwd}"),
            None => assert!(
                matches!(got, Err(ValidationError::CwdOutsideWorkspace { .. })),
                "{cwd}: {got:?}"
            ),
        }
    }
}

#[test]
fn timeout_above_maximum_is_refused() {
    let mut r = req("sleep");
    r.timeout_secs = 601;
    assert_eq!(
        r.validate(&RequestLimits::default()),
        Err(ValidationError::TimeoutTooLarge {
            requested: 601,
            max: 600
        })
    );
}

#[test]
fn sandbox_paths_must_be_clean_absolute() {
    let mut r = req("ls");
    r.sandbox.ro_paths = vec!["relative".into()];
    assert!(matches!(
        r.validate(&RequestLimits::default()),
        Err(ValidationError::BadSandboxPath { .. })
    ));
    let mut r = req("ls");
    r.sandbox.limits.cpu_limit = f32::NAN;
    assert!(matches!(
        r.validate(&RequestLimits::default()),
        Err(ValidationError::BadLimit {
            field: "cpu_limit",
            ..
        })
    ));
}

fn file(path: &str, op: FileOp) -> FileRequest {
    FileRequest {
        path: path.into(),
        op,
        content_len: 0,
        mode: 0,
        recursive: false,
    }
}

#[test]
fn file_paths_are_confined_to_the_root() {
    let l = RequestLimits::default();
    assert_eq!(
        file("a/b.txt", FileOp::Read).validate(&l).unwrap().path,
        "a/b.txt"
    );
    assert_eq!(
        file("/files/a", FileOp::Read).validate(&l).unwrap().path,
        "a"
    );
    for bad in ["/etc/passwd", "../x", "a/../../x", "/files/../etc"] {
        assert!(
            matches!(
                file(bad, FileOp::Read).validate(&l),
                Err(ValidationError::PathOutsideRoot { .. })
            ),
            "{bad}"
        );
    }
    assert_eq!(
        file("/files", FileOp::Delete).validate(&l),
        Err(ValidationError::RootOperation { op: "deleted" })
    );
    assert_eq!(
        file("", FileOp::Read).validate(&l),
        Err(ValidationError::EmptyPath)
    );
}

#[test]
fn file_mode_defaults_and_rejects_special_bits() {
    let l = RequestLimits::default();
    assert_eq!(file("x", FileOp::Write).validate(&l).unwrap().mode, 0o644);
    let mut f = file("x", FileOp::Write);
    f.mode = 0o4755;
    assert_eq!(
        f.validate(&l),
        Err(ValidationError::BadMode { mode: 0o4755 })
    );
}

#[test]
fn task_ids_round_trip_and_reject_garbage() {
    let id = TaskId::new();
    assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
    assert!("not-a-uuid".parse::<TaskId>().is_err());
    assert!("".parse::<TaskId>().is_err());
    assert_eq!(id.as_uuid().get_version_num(), 7);
}

#[test]
fn task_states_round_trip_through_their_names() {
    for st in TaskState::ALL {
        assert_eq!(st.as_str().parse::<TaskState>().unwrap(), st);
    }
    assert!(TaskState::Completed.is_terminal());
    assert!(!TaskState::Running.is_terminal());
}
