use std::path::{Path, PathBuf};

use super::{container_profile, in_usr, parse_ldd};

#[test]
fn ldd_output_yields_libraries_and_loader_not_vdso() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                \tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f01)\n\
                \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
    assert_eq!(
        parse_ldd(text),
        vec![
            PathBuf::from("/lib/x86_64-linux-gnu/libseccomp.so.2"),
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
        ]
    );
}

#[test]
fn ldd_of_a_static_binary_yields_nothing() {
    assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
}

#[test]
fn host_paths_land_under_merged_usr() {
    assert_eq!(
        in_usr(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
        PathBuf::from("usr/lib/x86_64-linux-gnu/libc.so.6")
    );
    assert_eq!(
        in_usr(Path::new("/usr/lib/x86_64-linux-gnu/libm.so.6")),
        PathBuf::from("usr/lib/x86_64-linux-gnu/libm.so.6")
    );
    assert_eq!(
        in_usr(Path::new("/lib64/ld-linux-x86-64.so.2")),
        PathBuf::from("usr/lib64/ld-linux-x86-64.so.2")
    );
}

#[test]
fn container_profile_sets_require_cgroup_false_once() {
    let inserted = container_profile("a = 1\n\n[limits]\nmemory = \"1GiB\"\n");
    assert_eq!(inserted.matches("require_cgroup = false").count(), 1);
    assert!(inserted.find("[limits]") < inserted.find("require_cgroup"));

    let replaced = container_profile("[limits]\nrequire_cgroup = true\npids = 4\n");
    assert_eq!(replaced.matches("require_cgroup").count(), 1);
    assert!(replaced.contains("require_cgroup = false"));
    assert!(replaced.contains("pids = 4"));

    let appended = container_profile("description = \"x\"\n");
    assert!(appended.ends_with("[limits]\n# Container image: no per-task cgroups (the container's cgroup bounds all\n# sandboxes together); per-process rlimits apply to each one.\nrequire_cgroup = false\n"));
}

/// Every shipped profile, as the image carries it, loads and accepts
/// per-process rlimits (a container cannot create task cgroups).
#[test]
fn every_shipped_profile_loads_in_its_container_form() -> anyhow::Result<()> {
    let src = crate::repo().join("sandbox-profiles");
    let dir = tempfile::tempdir()?;
    let mut count = 0;
    for e in std::fs::read_dir(&src)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p)?;
            let name = p.file_name().ok_or_else(|| anyhow::anyhow!("no name"))?;
            std::fs::write(dir.path().join(name), container_profile(&text))?;
            count += 1;
        }
    }
    assert!(count > 0, "no profiles in {}", src.display());
    let profiles = mcp_sandbox::Profiles::load_dir(dir.path())?;
    assert_eq!(profiles.names().len(), count);
    for name in profiles.names() {
        let p = profiles
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("profile {name} vanished"))?;
        assert!(
            !p.limits.require_cgroup,
            "profile {name} still requires a cgroup"
        );
    }
    Ok(())
}
