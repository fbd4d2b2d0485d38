use super::*;

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        at_ms: 1_700_000_000_000 + i64::try_from(n).unwrap_or(0),
        request_id: format!("req-{n}"),
        trace_id: None,
        principal: "alice".to_owned(),
        tenant: "t1".to_owned(),
        action: "execute".to_owned(),
        decision: Some(DecisionSummary {
            revision: "rev".to_owned(),
            allow: n.is_multiple_of(2),
            reasons: vec![],
        }),
        task_id: None,
        command: Some(format!("echo {n}")),
        input_sha256: Some(sha256_hex(b"x")),
        output_sha256: None,
        outcome: "allowed".to_owned(),
        latency_us: n,
    }
}

fn chain(n: u64) -> Vec<AuditRecord> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let r = seal(seq, &prev, event(seq));
            prev.clone_from(&r.hash);
            r
        })
        .collect()
}

fn signer() -> Signer {
    Signer::from_bytes(&[7; 32])
}

fn verify(
    records: &[AuditRecord],
    checkpoints: Vec<Checkpoint>,
    key: Option<VerifyingKey>,
) -> Result<VerifyReport, Finding> {
    let mut v = Verifier::new(checkpoints, key);
    for r in records {
        v.push(r)?;
    }
    v.finish()
}

#[test]
fn canonical_encoding_is_stable_and_covers_every_field() {
    let e = event(1);
    assert_eq!(canonical_bytes(1, &e), canonical_bytes(1, &e.clone()));
    let base = record_hash(1, GENESIS_HASH, &e);
    assert_eq!(base.len(), 64);
    let mut variants = Vec::new();
    let mut m = e.clone();
    m.outcome = "denied".to_owned();
    variants.push(m);
    let mut m = e.clone();
    m.trace_id = Some(String::new());
    variants.push(m);
    let mut m = e.clone();
    m.latency_us += 1;
    variants.push(m);
    let mut m = e.clone();
    m.decision = None;
    variants.push(m);
    for v in variants {
        assert_ne!(record_hash(1, GENESIS_HASH, &v), base);
    }
    assert_ne!(record_hash(2, GENESIS_HASH, &e), base, "seq is covered");
    assert_ne!(
        record_hash(1, &"1".repeat(64), &e),
        base,
        "prev hash is covered"
    );
}

#[test]
fn field_boundaries_cannot_be_shifted() {
    // "ab"+"c" and "a"+"bc" must not hash alike.
    let mut a = event(1);
    a.principal = "ab".to_owned();
    a.tenant = "c".to_owned();
    let mut b = event(1);
    b.principal = "a".to_owned();
    b.tenant = "bc".to_owned();
    assert_ne!(canonical_bytes(1, &a), canonical_bytes(1, &b));
}

#[test]
fn an_untouched_chain_verifies() {
    let s = signer();
    let records = chain(10);
    let cps = vec![
        s.checkpoint(5, &records[4].hash, 1),
        s.checkpoint(10, &records[9].hash, 2),
    ];
    let report = verify(&records, cps, Some(s.verifying_key())).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.checkpoints, 2);
    assert!(report.signatures_checked);
    assert_eq!(report.unanchored, 0);
    assert_eq!(report.last_hash, records[9].hash);
}

#[test]
fn an_empty_log_verifies() {
    let report = verify(&[], vec![], None).unwrap();
    assert_eq!(report.last_seq, 0);
    assert_eq!(report.last_hash, GENESIS_HASH);
}

#[test]
fn an_edited_record_is_named() {
    let mut records = chain(6);
    records[3].event.outcome = "ok".to_owned();
    let f = verify(&records, vec![], None).unwrap_err();
    assert_eq!(
        f,
        Finding {
            seq: 4,
            problem: Problem::HashMismatch
        }
    );
}

#[test]
fn a_deleted_record_is_named() {
    let mut records = chain(6);
    records.remove(2);
    let f = verify(&records, vec![], None).unwrap_err();
    assert_eq!(
        f,
        Finding {
            seq: 3,
            problem: Problem::Missing { found: 4 }
        }
    );
}

#[test]
fn a_reordered_pair_is_named() {
    let mut records = chain(6);
    records.swap(1, 2);
    let (a, b) = (records[1].seq, records[2].seq);
    records[1].seq = b;
    records[2].seq = a;
    let f = verify(&records, vec![], None).unwrap_err();
    assert_eq!(f.seq, 2);
}

#[test]
fn an_inserted_record_is_named() {
    let records = chain(5);
    // Insert a forged record at 3 and renumber the rest, as an attacker
    // would to keep the numbers contiguous.
    let mut forged = records[..2].to_vec();
    forged.push(seal(3, &records[1].hash, event(99)));
    for r in &records[2..] {
        let mut r = r.clone();
        r.seq += 1;
        forged.push(r);
    }
    let f = verify(&forged, vec![], None).unwrap_err();
    // The forged record is a valid link; the first record it displaced is not.
    assert_eq!(
        f,
        Finding {
            seq: 4,
            problem: Problem::BrokenLink
        }
    );
}

#[test]
fn a_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    let s = signer();
    let records = chain(6);
    let cp = s.checkpoint(6, &records[5].hash, 1);
    // Rewrite record 2 and recompute every hash after it.
    let mut prev = records[0].hash.clone();
    let mut forged = vec![records[0].clone()];
    for r in &records[1..] {
        let mut e = r.event.clone();
        if r.seq == 2 {
            e.outcome = "ok".to_owned();
        }
        let r = seal(r.seq, &prev, e);
        prev.clone_from(&r.hash);
        forged.push(r);
    }
    let f = verify(&forged, vec![cp], Some(s.verifying_key())).unwrap_err();
    assert_eq!(
        f,
        Finding {
            seq: 6,
            problem: Problem::CheckpointMismatch
        }
    );
}

#[test]
fn a_truncated_tail_is_caught_by_a_checkpoint() {
    let s = signer();
    let records = chain(6);
    let cp = s.checkpoint(6, &records[5].hash, 1);
    let f = verify(&records[..4], vec![cp], Some(s.verifying_key())).unwrap_err();
    assert_eq!(
        f,
        Finding {
            seq: 5,
            problem: Problem::Truncated { last: 4 }
        }
    );
}

#[test]
fn forged_and_foreign_checkpoints_are_refused() {
    let s = signer();
    let records = chain(3);
    let mut cp = s.checkpoint(3, &records[2].hash, 1);
    cp.at_ms += 1;
    let f = verify(&records, vec![cp], Some(s.verifying_key())).unwrap_err();
    assert_eq!(
        f,
        Finding {
            seq: 3,
            problem: Problem::BadSignature
        }
    );

    let other = Signer::from_bytes(&[8; 32]).checkpoint(3, &records[2].hash, 1);
    let f = verify(&records, vec![other.clone()], Some(s.verifying_key())).unwrap_err();
    assert!(matches!(f.problem, Problem::OtherKey { .. }), "{f}");
    // Without a key only the hashes are compared.
    let report = verify(&records, vec![other], None).unwrap();
    assert!(!report.signatures_checked);
}

#[test]
fn keys_round_trip_through_pem() {
    let s = signer();
    let pem = s.to_pem().unwrap();
    assert!(pem.contains("BEGIN PRIVATE KEY"));
    let back = Signer::from_pem(&pem).unwrap();
    assert_eq!(back.key_id(), s.key_id());
    assert_eq!(verifying_key_from_pem(&pem).unwrap(), s.verifying_key());
    assert!(matches!(
        Signer::from_pem("not a key"),
        Err(AuditError::BadKey { .. })
    ));
    assert!(!format!("{s:?}").contains(&hex::encode([7u8; 32])));
}

#[test]
fn records_serialise_flat_for_export() {
    let r = &chain(1)[0];
    let v = serde_json::to_value(r).unwrap();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["principal"], "alice");
    assert_eq!(v["hash"], r.hash.as_str());
    let back: AuditRecord = serde_json::from_value(v).unwrap();
    assert_eq!(&back, r);
}
