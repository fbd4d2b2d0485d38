//! Per-sandbox uids (`Sandbox::set_uid_range`): concurrent sandboxes run as
//! different uids of the range, sharing the tenant's files through the
//! sandbox group; planted setuid files belong to a range uid, never root;
//! a uid goes back to the range when its task ends.

use std::os::unix::fs::MetadataExt;

use mcp_sandbox::UidRange;

use super::*;

const START: u32 = 200_000;

fn harness(count: u32) -> Harness {
    assert!(
        host_is_root(),
        "per-sandbox uids need a gateway running as root: run these tests as root"
    );
    let h = Harness::new();
    h.sandbox
        .set_uid_range(UidRange {
            start: START,
            count,
        })
        .unwrap();
    h
}

/// Writes its uid to /files/<me>, waits (up to 20 s) for /files/<other>,
/// then prints its uid, the owner of the other's file and its NPROC limit.
fn meet(h: &Harness, me: &str, other: &str) -> RunSpec {
    h.sh(&format!(
        "id -u > /files/{me}; i=0; while [ ! -e /files/{other} ] && [ $i -lt 400 ]; do \
         sleep 0.05; i=$((i+1)); done; echo uid=$(id -u); echo other=$(cat /files/{other}); \
         echo nproc=$(grep 'Max processes' /proc/self/limits | tr -s ' ' | cut -d' ' -f3)"
    ))
}

fn field(out: &RunOutcome, key: &str) -> String {
    text(&out.result.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn concurrent_sandboxes_get_different_uids_of_the_range() {
    let h = harness(1000);
    let (a, b) = tokio::join!(h.run(meet(&h, "a", "b")), h.run(meet(&h, "b", "a")));
    let (a, b) = (a.0, b.0);
    assert_eq!(a.ending, Ending::Exited(0), "{}", text(&a.result.stderr));
    assert_eq!(b.ending, Ending::Exited(0), "{}", text(&b.result.stderr));
    let (ua, ub): (u32, u32) = (
        field(&a, "uid").parse().unwrap(),
        field(&b, "uid").parse().unwrap(),
    );
    // Inside, each sees its own host uid (bwrap maps it 1:1) ...
    assert_ne!(ua, ub);
    let range = UidRange {
        start: START,
        count: 1000,
    };
    assert!(range.contains(ua) && range.contains(ub), "{ua} {ub}");
    // ... and both saw each other: they ran at the same time, and the
    // tenant's files are shared through the sandbox group.
    assert_eq!(field(&a, "other"), ub.to_string());
    assert_eq!(field(&b, "other"), ua.to_string());
    // RLIMIT_NPROC is the profile's pids, not a multiple shared by a uid.
    let pids = h.sandbox.profiles().get("default").unwrap().limits.pids;
    assert_eq!(field(&a, "nproc"), pids.to_string());
    let dir = std::fs::metadata(h.files_root().join("acme")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o2770);
    assert_eq!((dir.uid(), dir.gid()), (65534, 65534));
    // Both uids are back in the range.
    assert_eq!(h.sandbox.uid_range().unwrap().1, 0);
}

#[tokio::test]
async fn planted_setuid_files_belong_to_a_range_uid() {
    let h = harness(1000);
    let script = "cp /usr/bin/id /files/suid-id && chmod 4755 /files/suid-id; \
                  chown 0:0 /files/suid-id 2>/dev/null && echo chown=ok || echo chown=refused; \
                  echo runs-as=$(/files/suid-id -u)";
    let (out, _) = h.run(h.sh(script)).await;
    let stdout = text(&out.result.stdout);
    assert!(stdout.contains("chown=refused"), "{stdout}");
    let runs_as: u32 = field(&out, "runs-as").parse().unwrap();
    let meta = std::fs::metadata(h.files_root().join("acme/suid-id")).unwrap();
    assert_ne!(meta.uid(), 0);
    assert!(
        UidRange {
            start: START,
            count: 1000
        }
        .contains(meta.uid()),
        "{}",
        meta.uid()
    );
    assert_eq!(meta.uid(), runs_as);
    // The group is the shared sandbox group (the directory is setgid).
    assert_eq!(meta.gid(), 65534);
}

#[tokio::test]
async fn an_exhausted_range_refuses_and_a_finished_task_frees_its_uid() {
    let h = harness(1);
    let first = h.run(meet(&h, "one", "release"));
    let second = async {
        // Wait until the first sandbox holds the only uid.
        let mine = h.files_root().join("acme/one");
        while !mine.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = h
            .run_with(h.sh("true"), CancellationToken::new())
            .await
            .unwrap_err();
        std::fs::write(h.files_root().join("acme/release"), "go").unwrap();
        err
    };
    let ((out, _), err) = tokio::join!(first, second);
    assert!(
        matches!(err, SandboxError::UidsExhausted { count: 1 }),
        "{err}"
    );
    assert_eq!(out.ending, Ending::Exited(0));
    assert_eq!(field(&out, "uid"), START.to_string());
    // Released: the next task gets the uid again.
    let (again, _) = h.run(h.sh("id -u")).await;
    assert_eq!(text(&again.result.stdout).trim(), START.to_string());
}

#[test]
fn bad_ranges_are_refused() {
    let h = Harness::new();
    for (range, want) in [
        (
            UidRange {
                start: 0,
                count: 10,
            },
            "root",
        ),
        (UidRange { start: 1, count: 0 }, "at least 1"),
        (
            UidRange {
                start: u32::MAX,
                count: 2,
            },
            "largest uid",
        ),
        (
            UidRange {
                start: 65_000,
                count: 1000,
            },
            "run_as uid 65534",
        ),
    ] {
        let err = h.sandbox.set_uid_range(range).unwrap_err().to_string();
        assert!(err.contains(want), "{range:?}: {err}");
    }
    h.sandbox
        .set_uid_range(UidRange {
            start: START,
            count: 5,
        })
        .unwrap();
    let err = h
        .sandbox
        .set_uid_range(UidRange {
            start: START,
            count: 5,
        })
        .unwrap_err();
    assert!(err.to_string().contains("already set"), "{err}");
}
