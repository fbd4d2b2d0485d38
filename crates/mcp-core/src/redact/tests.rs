use super::*;

fn r(s: &str) -> String {
    Redactor::built_in().redact(s).into_owned()
}

#[test]
fn built_in_rules_all_compile() {
    assert_eq!(BUILT_IN_RULES.len(), BUILT_IN.len());
}

#[test]
fn each_kind_of_secret_is_redacted() {
    let cases = [
        ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
        ),
        ("glpat-abcdefghij0123456789", "glpat-abcdefghij0123456789"),
        ("xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgNryP4J3jVmNHl0w5N",
        ),
        ("postgres://app:hunter2@db:5432/x", "hunter2"),
        ("password=hunter2 next", "hunter2"),
        ("API_KEY: abc123def", "abc123def"),
        ("curl -d token=s3cr3t&x=1", "s3cr3t"),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAAA\n-----END RSA PRIVATE KEY-----",
            "MIIEow",
        ),
    ];
    for (input, secret) in cases {
        let out = r(input);
        assert!(!out.contains(secret), "{input:?} -> {out:?}");
        assert!(out.contains(REDACTED), "{input:?} -> {out:?}");
    }
    // Keys are kept, so the reader still knows what was there.
    assert_eq!(r("password=hunter2 next"), "password=<masked> next");
    assert_eq!(r("nothing secret here"), "nothing secret here");
    assert!(matches!(
        Redactor::built_in().redact("plain"),
        Cow::Borrowed(_)
    ));
}

#[test]
fn configured_patterns_and_literals_are_redacted_and_bad_ones_refused() {
    let mut red = Redactor::new(&["ACME-[0-9]{4}"]).unwrap();
    red.add_literal(b"opensesame");
    red.add_literal(b"");
    assert_eq!(
        red.redact("id ACME-1234 pw opensesame!"),
        "id <masked> pw <masked>!"
    );
    let err = Redactor::new(&["("]).unwrap_err();
    assert_eq!(err.pattern, "(");
    assert_eq!(red.longest_literal(), 10);
}

#[test]
fn non_utf8_output_is_scanned() {
    let mut data = vec![0xff, 0xfe];
    data.extend_from_slice(b" AKIAIOSFODNN7EXAMPLE \xff");
    let out = Redactor::built_in().redact_bytes(&data).into_owned();
    assert!(!out.windows(20).any(|w| w == b"AKIAIOSFODNN7EXAMPLE"));
    assert!(out.starts_with(&[0xff, 0xfe]));
}

#[test]
fn a_secret_split_across_chunks_is_still_redacted() {
    let mut red = Redactor::built_in();
    red.add_literal(b"topsecretvalue");
    let mut lines = LineRedactor::new(4096);
    let mut out = Vec::new();
    for chunk in [
        &b"one AKIAIOSF"[..],
        b"ODNN7EXAMPLE two\nthree topsec",
        b"retvalue\nfour",
    ] {
        out.extend(lines.push(&red, chunk));
    }
    out.extend(lines.finish(&red));
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text, "one <masked> two\nthree <masked>\nfour");
}

#[test]
fn a_pem_block_is_held_until_it_ends() {
    let red = Redactor::built_in();
    let mut lines = LineRedactor::new(64 * 1024);
    let mut out = Vec::new();
    out.extend(lines.push(&red, b"before\n-----BEGIN PRIVATE KEY-----\nAAAA\n"));
    assert_eq!(out, b"", "an open block is held back");
    out.extend(lines.push(&red, b"BBBB\n-----END PRIVATE KEY-----\nafter\n"));
    out.extend(lines.finish(&red));
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text, "before\n<masked>\nafter\n");
}

#[test]
fn a_line_longer_than_the_carry_is_released() {
    let red = Redactor::built_in();
    let mut lines = LineRedactor::new(8);
    assert!(lines.push(&red, b"abc").is_empty());
    assert_eq!(lines.push(&red, b"defghij"), b"abcdefghij");
    assert!(lines.finish(&red).is_empty());
}

#[test]
fn secret_references_are_recognised_and_checked() {
    use crate::secrets::{check_name, names, reference};
    assert_eq!(reference("secret://db/password"), Some("db/password"));
    assert_eq!(reference("plain"), None);
    let env = [
        "secret://b".to_owned(),
        "x".to_owned(),
        "secret://a".to_owned(),
        "secret://b".to_owned(),
    ];
    assert_eq!(names(env.iter()), ["a", "b"]);
    assert!(check_name("db/password").is_ok());
    assert!(check_name("k8s-secret.v1/token_1").is_ok());
    for bad in ["", "../etc/passwd", "/abs", "a//b", "a/./b", "a b", "a\0b"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_name(&"a".repeat(300)).is_err());
}
