use super::*;

fn out(data: &str) -> OutputChunk {
    OutputChunk::new(ChunkKind::Stdout, data.as_bytes().to_vec())
}

#[test]
fn followers_see_appended_bytes_exactly_once() {
    let t = LiveTask::new();
    let mut cur = Cursor::default();
    t.push(out("ab\n"));
    let (got, done) = t.read_from(&mut cur);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"ab\n");
    assert!(!done);
    // Coalesced into the same chunk: only the new bytes come out.
    t.push(out("cd\n"));
    t.push(OutputChunk::new(ChunkKind::Stderr, b"e\n".to_vec()));
    t.finish();
    let (got, done) = t.read_from(&mut cur);
    let data: Vec<_> = got.iter().map(|c| (c.kind, c.data.clone())).collect();
    assert_eq!(
        data,
        vec![
            (ChunkKind::Stdout, b"cd\n".to_vec()),
            (ChunkKind::Stderr, b"e\n".to_vec())
        ]
    );
    assert!(done);
    // A late follower replays everything from the start.
    let (all, _) = t.read_from(&mut Cursor::default());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].data, b"ab\ncd\n");
}

#[test]
fn secrets_split_across_chunks_never_reach_a_follower() {
    let t = LiveTask::new();
    let mut rules = Redactor::built_in();
    rules.add_literal(b"s3cr3t-value");
    t.set_redactor(rules);
    let mut cur = Cursor::default();
    let mut seen = Vec::new();
    for piece in [
        "key AKIAIOSFOD",
        "NN7EXAMPLE and s3cr",
        "3t-value\nnext line",
        " ends",
    ] {
        t.push(out(piece));
        let (got, _) = t.read_from(&mut cur);
        seen.extend(got.into_iter().flat_map(|c| c.data));
    }
    // The unfinished last line is released before the exit code.
    t.push(OutputChunk::new(ChunkKind::ExitCode, b"0".to_vec()));
    t.finish();
    let (got, _) = t.read_from(&mut cur);
    let (tail, code): (Vec<_>, Vec<_>) = got.into_iter().partition(|c| c.kind == ChunkKind::Stdout);
    seen.extend(tail.into_iter().flat_map(|c| c.data));
    assert_eq!(
        String::from_utf8(seen).unwrap(),
        "key <masked> and <masked>\nnext line ends"
    );
    assert_eq!(code.len(), 1);
}

#[test]
fn stored_results_are_redacted_and_marked_when_cut() {
    let t = LiveTask::new();
    let mut stdout = b"token=abc123\n".to_vec();
    stdout.extend_from_slice(&[b'x'; 100]);
    let r = t.redact_result(TaskResult {
        stdout,
        stdout_truncated: true,
        stderr: b"fine".to_vec(),
        ..TaskResult::default()
    });
    // The marker stays within the cap: it replaces the last bytes.
    assert_eq!(r.stdout.len(), 113);
    assert!(r.stdout.starts_with(b"token=<masked>\nxxx"));
    assert!(r.stdout.ends_with(TRUNCATED_MARKER));
    assert_eq!(r.stderr, b"fine");
}

#[test]
fn first_cancel_reason_wins() {
    let t = LiveTask::new();
    t.cancel("cancelled by client");
    t.cancel("gateway shutting down");
    assert_eq!(t.cancel_reason().as_deref(), Some("cancelled by client"));
    assert!(t.cancel_token().is_cancelled());
}

#[tokio::test]
async fn wait_done_returns_after_finish() {
    let t = Arc::new(LiveTask::new());
    let t2 = t.clone();
    let h = tokio::spawn(async move { t2.wait_done().await });
    t.push(out("x"));
    t.finish();
    h.await.unwrap();
    assert!(t.is_done());
}
