use super::*;

fn settings(dir: &std::path::Path, max: u64) -> SecretsSettings {
    SecretsSettings {
        dir: Some(dir.to_path_buf()),
        max_bytes: max,
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn references_resolve_inside_the_directory_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("secrets");
    std::fs::create_dir_all(root.join("db")).unwrap();
    std::fs::write(root.join("db/password"), "hunter2").unwrap();
    std::fs::write(tmp.path().join("outside"), "host secret").unwrap();
    // Kubernetes mounts: relative symlinks that stay inside are followed.
    std::fs::create_dir_all(root.join("..2026_data")).unwrap();
    std::fs::write(root.join("..2026_data/token"), "tok").unwrap();
    std::os::unix::fs::symlink("..2026_data/token", root.join("token")).unwrap();
    // Symlinks that leave the directory are refused.
    std::os::unix::fs::symlink("../outside", root.join("escape")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("absolute")).unwrap();
    std::fs::write(root.join("big"), vec![b'x'; 100]).unwrap();
    let s = settings(&root, 64);

    let got = resolve(
        &s,
        &env(&[
            ("DB", "secret://db/password"),
            ("T", "secret://token"),
            ("LANG", "C"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(got, env(&[("DB", "hunter2"), ("T", "tok")]));

    for (value, why) in [
        ("secret://escape", "cannot be read"),
        ("secret://absolute", "cannot be read"),
        ("secret://../outside", "is not made of path segments"),
        ("secret://missing", "cannot be read"),
        ("secret://big", "larger than 64 bytes"),
        ("secret://db", "not a file"),
    ] {
        let err = resolve(&s, &env(&[("X", value)])).await.unwrap_err();
        assert!(err.contains(why), "{value}: {err}");
        assert!(
            !err.contains("host secret") && !err.contains(tmp.path().to_str().unwrap()),
            "{err}"
        );
    }
    let off = SecretsSettings::default();
    assert!(
        resolve(&off, &env(&[("X", "secret://db/password")]))
            .await
            .unwrap_err()
            .contains("not enabled")
    );
    assert!(
        resolve(&off, &env(&[("X", "plain")]))
            .await
            .unwrap()
            .is_empty()
    );
}
