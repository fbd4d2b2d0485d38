use mcp_client::WriteFileRequest;
use tonic::Code;

use crate::harness::{TestGateway, cmd, code_of};

fn write(path: &str, content: &[u8], create_dirs: bool) -> WriteFileRequest {
    WriteFileRequest {
        path: path.into(),
        content: content.to_vec(),
        create_dirs,
        mode: 0,
    }
}

#[tokio::test]
async fn files_written_by_the_api_are_seen_by_commands_and_back() {
    let mut gw = TestGateway::start().await;
    let w = gw
        .client
        .write_file(write("notes/hello.txt", b"hi there\n", true))
        .await
        .unwrap();
    assert_eq!(w.bytes_written, 9);
    let r = gw.client.read_file("notes/hello.txt").await.unwrap();
    assert_eq!(r.content, b"hi there\n");
    assert_eq!(r.mime_type, "text/plain");
    // The same file, as a command sees it.
    let r = gw
        .client
        .run(cmd("cat", &["/files/notes/hello.txt"]))
        .await
        .unwrap();
    assert_eq!(r.result.unwrap().stdout, "hi there\n");
    // A command's output file, read through the API.
    let r = gw
        .client
        .run(cmd(
            "python3",
            &["-c", "open('/files/out.txt','w').write('from sandbox')"],
        ))
        .await
        .unwrap();
    assert_eq!(r.result.unwrap().exit_code, 0);
    assert_eq!(
        gw.client.read_file("/files/out.txt").await.unwrap().content,
        b"from sandbox"
    );

    let d = gw.client.delete_file("notes", true).await.unwrap();
    assert!(d.success);
    let (code, _) = code_of(gw.client.read_file("notes/hello.txt").await);
    assert_eq!(code, Code::NotFound);
    gw.stop().await;
}

#[tokio::test]
async fn file_requests_cannot_leave_the_root() {
    let mut gw = TestGateway::start().await;
    for bad in [
        "../etc/passwd",
        "/etc/passwd",
        "a/../../x",
        "/files/../etc/passwd",
    ] {
        let (code, msg) = code_of(gw.client.read_file(bad).await);
        assert_eq!(code, Code::InvalidArgument, "{bad}: {msg}");
        assert!(msg.contains("leaves the files root"), "{msg}");
        let (code, _) = code_of(gw.client.write_file(write(bad, b"x", true)).await);
        assert_eq!(code, Code::InvalidArgument, "{bad}");
        let (code, _) = code_of(gw.client.delete_file(bad, true).await);
        assert_eq!(code, Code::InvalidArgument, "{bad}");
    }
    // A symlink planted by a sandboxed command must not let the root-run
    // gateway read outside the files root.
    let r = gw
        .client
        .run(cmd("python3", &["-c", "import os; os.symlink('/etc/shadow','/files/leak'); os.symlink('../../..','/files/up')"]))
        .await
        .unwrap();
    assert_eq!(r.result.unwrap().exit_code, 0);
    for path in ["leak", "up/etc/passwd"] {
        let res = gw.client.read_file(path).await;
        let (code, msg) = code_of(res);
        assert!(
            matches!(code, Code::InvalidArgument | Code::NotFound),
            "{path}: {code:?} {msg}"
        );
    }
    let (code, _) = code_of(
        gw.client
            .write_file(write("up/tmp/pwned", b"x", true))
            .await,
    );
    assert!(
        matches!(code, Code::InvalidArgument | Code::NotFound),
        "{code:?}"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    gw.stop().await;
}

#[tokio::test]
async fn file_errors_are_precise() {
    let mut gw = TestGateway::start().await;
    let (code, msg) = code_of(
        gw.client
            .write_file(write("missing/dir/x", b"x", false))
            .await,
    );
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("create_dirs"), "{msg}");
    gw.client
        .write_file(write("d/f", b"x", true))
        .await
        .unwrap();
    let (code, msg) = code_of(gw.client.delete_file("d", false).await);
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    let (code, _) = code_of(gw.client.read_file("d").await);
    assert_eq!(code, Code::FailedPrecondition);
    let (code, msg) = code_of(gw.client.read_file(".env").await);
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    let (code, _) = code_of(gw.client.delete_file("/files", true).await);
    assert_eq!(code, Code::InvalidArgument);
    let mut w = write("x", b"x", false);
    w.mode = 0o4755;
    let (code, msg) = code_of(gw.client.write_file(w).await);
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    gw.stop().await;
}
