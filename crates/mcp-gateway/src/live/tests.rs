use super::*;

fn out(data: &str) -> OutputChunk {
    OutputChunk::new(ChunkKind::Stdout, data.as_bytes().to_vec())
}

#[test]
fn followers_see_appended_bytes_exactly_once() {
    let t = LiveTask::new();
    let mut cur = Cursor::default();
    t.push(out("ab"));
    let (got, done) = t.read_from(&mut cur);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"ab");
    assert!(!done);
    // Coalesced into the same chunk: only the new bytes come out.
    t.push(out("cd"));
    t.push(OutputChunk::new(ChunkKind::Stderr, b"e".to_vec()));
    t.finish();
    let (got, done) = t.read_from(&mut cur);
    let data: Vec<_> = got.iter().map(|c| (c.kind, c.data.clone())).collect();
    assert_eq!(
        data,
        vec![
            (ChunkKind::Stdout, b"cd".to_vec()),
            (ChunkKind::Stderr, b"e".to_vec())
        ]
    );
    assert!(done);
    // A late follower replays everything from the start.
    let (all, _) = t.read_from(&mut Cursor::default());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].data, b"abcd");
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
