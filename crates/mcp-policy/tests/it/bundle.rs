//! Policy bundles: build, load, sign and verify, bounds on the archive,
//! reload keeping the previous revision.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use ed25519_dalek::SigningKey;
use mcp_policy::{EngineOptions, PolicyEngine, PolicyError, PolicyService, ServiceOptions};

use super::{ALLOW_ALL, DENY_ALL, ls_input, policies_dir, policy_dir};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn keyed(seed: u8) -> EngineOptions {
    EngineOptions {
        bundle_key: Some(key(seed).verifying_key()),
        ..EngineOptions::default()
    }
}

/// The reason of a [`PolicyError::Bundle`], or a failure naming what came.
fn refusal(result: Result<PolicyEngine, PolicyError>) -> Result<String> {
    match result {
        Err(PolicyError::Bundle { reason, .. }) => Ok(reason),
        Err(other) => anyhow::bail!("expected a bundle refusal, got {other}"),
        Ok(e) => anyhow::bail!("expected a refusal, loaded {}", e.revision()),
    }
}

/// Writes a .tar.gz of raw entries: (name, type, declared size, bytes).
/// The name goes straight into the header, so `..` and absolute paths can
/// be written (tar::Builder refuses them, as an attacker's tool would not).
fn raw_tar(out: &Path, entries: &[(&str, tar::EntryType, u64, &[u8])]) -> Result<()> {
    let file = std::fs::File::create(out)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, kind, size, bytes) in entries {
        let mut header = tar::Header::new_old();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(*size);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, *bytes)?;
    }
    tar.into_inner()?.finish()?.flush()?;
    Ok(())
}

#[test]
fn built_bundle_loads_and_decides_like_its_directory() -> Result<()> {
    let out = tempfile::tempdir()?;
    let bundle = out.path().join("policies.tar.gz");
    let built = mcp_policy::build_bundle(&policies_dir(), &bundle, "v42", None)?;
    assert!(built.files.contains(&".manifest".to_owned()));
    assert!(built.files.contains(&"data.json".to_owned()));
    assert!(built.files.contains(&"main.rego".to_owned()));
    // Tests travel with the bundle; case files do not.
    assert!(built.files.iter().any(|f| f.ends_with("_test.rego")));
    assert!(!built.files.iter().any(|f| f.starts_with("cases/")));
    assert!(!built.signed);

    let from_bundle = PolicyEngine::load(&bundle)?;
    let from_dir = PolicyEngine::load(&policies_dir())?;
    assert!(
        from_bundle.revision().starts_with("v42+"),
        "{}",
        from_bundle.revision()
    );
    assert!(from_bundle.compiled());
    assert!(
        !from_bundle
            .files()
            .iter()
            .any(|f| f.ends_with("_test.rego"))
    );
    let input = ls_input()?;
    let (a, b) = (from_bundle.decide(&input), from_dir.decide(&input));
    assert!(a.allow, "{a:?}");
    assert_eq!(
        (a.allow, a.deny_reasons, a.obligations),
        (b.allow, b.deny_reasons, b.obligations)
    );

    // The same content builds the same bundle, byte for byte.
    let again = out.path().join("again.tar.gz");
    mcp_policy::build_bundle(&policies_dir(), &again, "v42", None)?;
    assert_eq!(std::fs::read(&bundle)?, std::fs::read(&again)?);
    Ok(())
}

#[test]
fn build_refuses_a_set_whose_tests_fail() -> Result<()> {
    let dir = policy_dir(&[
        ("main.rego", ALLOW_ALL),
        (
            "main_test.rego",
            "package mcp_test\n\ntest_fails if { false }\n",
        ),
    ])?;
    let out = tempfile::tempdir()?;
    let err = mcp_policy::build_bundle(dir.path(), &out.path().join("b.tar.gz"), "1", None);
    assert!(
        matches!(err, Err(PolicyError::TestsFailed { .. })),
        "{err:?}"
    );
    assert!(!out.path().join("b.tar.gz").exists());
    Ok(())
}

#[test]
fn nested_data_json_is_mounted_at_its_path() -> Result<()> {
    let dir = policy_dir(&[(
        "main.rego",
        r#"package mcp

decision := {"allow": data.teams.ops.open, "deny_reasons": [], "warnings": [], "obligations": {}} if data.flag
"#,
    )])?;
    std::fs::write(dir.path().join("data.json"), r#"{"flag": true}"#)?;
    std::fs::create_dir_all(dir.path().join("teams/ops"))?;
    std::fs::write(dir.path().join("teams/ops/data.json"), r#"{"open": true}"#)?;
    let out = tempfile::tempdir()?;
    let bundle = out.path().join("b.tar.gz");
    mcp_policy::build_bundle(dir.path(), &bundle, "", None)?;
    let engine = PolicyEngine::load(&bundle)?;
    // No manifest revision: the content hash alone.
    assert_eq!(engine.revision().len(), 12);
    assert!(engine.decide(&ls_input()?).allow);
    Ok(())
}

#[test]
fn signed_bundles_load_only_with_the_right_key_and_untouched() -> Result<()> {
    let out = tempfile::tempdir()?;
    let signed = out.path().join("signed.tar.gz");
    let built = mcp_policy::build_bundle(&policies_dir(), &signed, "s1", Some(&key(1)))?;
    assert!(built.signed);
    assert!(
        PolicyEngine::load_with(&signed, keyed(1))?
            .decide(&ls_input()?)
            .allow
    );
    // Without a key configured, the signature is not required.
    PolicyEngine::load(&signed)?;

    let why = refusal(PolicyEngine::load_with(&signed, keyed(2)))?;
    assert!(why.contains("does not match the configured key"), "{why}");

    let unsigned = out.path().join("unsigned.tar.gz");
    mcp_policy::build_bundle(&policies_dir(), &unsigned, "s1", None)?;
    let why = refusal(PolicyEngine::load_with(&unsigned, keyed(1)))?;
    assert!(why.contains("not signed"), "{why}");

    // Tampering: same signature file, one policy changed to allow all.
    let entries = unpack(&signed)?;
    let tampered: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| {
            let b = if n == "main.rego" {
                ALLOW_ALL.as_bytes().to_vec()
            } else {
                b.clone()
            };
            (n.clone(), b)
        })
        .collect();
    let path = out.path().join("tampered.tar.gz");
    repack(&path, &tampered)?;
    let why = refusal(PolicyEngine::load_with(&path, keyed(1)))?;
    assert!(why.contains("main.rego was changed after signing"), "{why}");

    // An added file the signature does not cover.
    let mut extra = entries.clone();
    extra.push(("zz.rego".to_owned(), DENY_ALL.as_bytes().to_vec()));
    repack(&path, &extra)?;
    let why = refusal(PolicyEngine::load_with(&path, keyed(1)))?;
    assert!(why.contains("zz.rego is not covered"), "{why}");

    // A removed one.
    let fewer: Vec<_> = entries
        .iter()
        .filter(|(n, _)| n != "file.rego")
        .cloned()
        .collect();
    repack(&path, &fewer)?;
    let why = refusal(PolicyEngine::load_with(&path, keyed(1)))?;
    assert!(why.contains("file.rego is missing"), "{why}");
    Ok(())
}

fn unpack(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(path)?));
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        out.push((name, bytes));
    }
    Ok(out)
}

fn repack(path: &Path, entries: &[(String, Vec<u8>)]) -> Result<()> {
    let raw: Vec<(&str, tar::EntryType, u64, &[u8])> = entries
        .iter()
        .map(|(n, b)| {
            (
                n.as_str(),
                tar::EntryType::Regular,
                b.len() as u64,
                b.as_slice(),
            )
        })
        .collect();
    raw_tar(path, &raw)
}

#[test]
fn archives_that_leave_the_bundle_or_are_too_big_are_refused() -> Result<()> {
    let out = tempfile::tempdir()?;
    let path = out.path().join("evil.tar.gz");
    let regular = tar::EntryType::Regular;
    let rego = ALLOW_ALL.as_bytes();
    let len = rego.len() as u64;

    raw_tar(&path, &[("../escape.rego", regular, len, rego)])?;
    let why = refusal(PolicyEngine::load(&path))?;
    assert!(why.contains("climbs out with .."), "{why}");

    raw_tar(&path, &[("/etc/main.rego", regular, len, rego)])?;
    let why = refusal(PolicyEngine::load(&path))?;
    assert!(why.contains("absolute path"), "{why}");

    raw_tar(&path, &[("main.rego", tar::EntryType::Symlink, 0, b"")])?;
    let why = refusal(PolicyEngine::load(&path))?;
    assert!(why.contains("not a regular file"), "{why}");

    // A header claiming more than the cap is refused before reading.
    raw_tar(
        &path,
        &[("main.rego", regular, mcp_policy::MAX_BUNDLE_BYTES + 1, b"")],
    )?;
    let why = refusal(PolicyEngine::load(&path))?;
    assert!(why.contains("bytes once decompressed"), "{why}");

    std::fs::write(&path, b"not gzip at all")?;
    let why = refusal(PolicyEngine::load(&path))?;
    assert!(why.contains("not a .tar.gz"), "{why}");

    raw_tar(&path, &[("main.rego", regular, len, rego)])?;
    assert!(PolicyEngine::load(&path)?.decide(&ls_input()?).allow);
    Ok(())
}

#[test]
fn a_broken_bundle_keeps_the_previous_revision_serving() -> Result<()> {
    let src = policy_dir(&[("main.rego", ALLOW_ALL)])?;
    let out = tempfile::tempdir()?;
    let bundle = out.path().join("active.tar.gz");
    mcp_policy::build_bundle(src.path(), &bundle, "r1", None)?;
    let service = Arc::new(PolicyService::start(&bundle, ServiceOptions::default())?);
    let first = service.revision();
    assert!(first.starts_with("r1+"));
    let _watcher = service.watch_with(Duration::from_millis(50))?;

    // Garbage in place of the bundle: rejected, r1 keeps deciding.
    std::fs::write(&bundle, b"\x1f\x8b garbage")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while service.stats().reload_failures == 0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "no failed reload within 20s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(service.revision(), first);
    assert!(service.decide(&ls_input()?).decision.allow);

    // A good new bundle renamed into place is picked up by the watcher.
    std::fs::write(src.path().join("main.rego"), DENY_ALL)?;
    mcp_policy::build_bundle(src.path(), &bundle, "r2", None)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !service.revision().starts_with("r2+") {
        ensure!(std::time::Instant::now() < deadline, "no reload within 20s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!service.decide(&ls_input()?).decision.allow);
    Ok(())
}
