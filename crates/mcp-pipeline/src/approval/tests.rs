#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use mcp_core::{Principal, TaskId};

use super::*;

fn settings() -> ApprovalSettings {
    RawApproval {
        token_secret: "0123456789abcdef0123456789abcdef".into(),
        token_max_ttl_secs: 300,
        ..Default::default()
    }
    .validate(&mut Vec::new())
}

fn approver() -> Principal {
    Principal {
        id: "bob".into(),
        tenant: "acme".into(),
        roles: vec!["ops".into()],
        auth: mcp_core::AuthMethod::ApiKey,
    }
}

fn secret() -> Vec<u8> {
    b"0123456789abcdef0123456789abcdef".to_vec()
}

#[test]
fn a_token_verifies_for_its_task_only() {
    let s = settings();
    let task = TaskId::new();
    let claims = new_claims(&approver(), task, Duration::from_secs(60));
    let token = mint_token(&secret(), &claims).unwrap();
    assert_eq!(verify_token(&s, &token, task).unwrap(), claims);
    assert!(matches!(
        verify_token(&s, &token, TaskId::new()),
        Err(GatewayError::ApprovalTokenInvalid { reason }) if reason.contains("another task")
    ));
}

#[test]
fn tokens_with_a_wrong_secret_audience_lifetime_or_expiry_are_refused() {
    let s = settings();
    let task = TaskId::new();
    let good = new_claims(&approver(), task, Duration::from_secs(60));
    let wrong_key = mint_token(b"another secret of thirty-two bytes!!", &good).unwrap();
    assert!(verify_token(&s, &wrong_key, task).is_err());

    let mut aud = good.clone();
    aud.aud = "someone-else".into();
    assert!(verify_token(&s, &mint_token(&secret(), &aud).unwrap(), task).is_err());

    let long = new_claims(&approver(), task, Duration::from_secs(3600));
    assert!(matches!(
        verify_token(&s, &mint_token(&secret(), &long).unwrap(), task),
        Err(GatewayError::ApprovalTokenInvalid { reason }) if reason.contains("lifetime")
    ));

    let mut expired = good.clone();
    expired.iat -= 600;
    expired.exp = expired.iat + 60;
    assert!(matches!(
        verify_token(&s, &mint_token(&secret(), &expired).unwrap(), task),
        Err(GatewayError::ApprovalTokenInvalid { reason }) if reason.contains("expired")
    ));

    assert!(verify_token(&s, "not-a-jwt", task).is_err());
    let off = RawApproval::default().validate(&mut Vec::new());
    assert!(matches!(
        verify_token(&off, &mint_token(&secret(), &good).unwrap(), task),
        Err(GatewayError::ApprovalTokenInvalid { reason }) if reason.contains("not configured")
    ));
}

#[test]
fn config_wants_a_long_secret_and_nonzero_durations() {
    let mut problems = Vec::new();
    RawApproval {
        ttl_secs: 0,
        token_secret: "short".into(),
        ..Default::default()
    }
    .validate(&mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        !format!("{:?}", settings()).contains("0123456789"),
        "secret never in Debug"
    );
}

#[test]
fn obligations_without_roles_fail_closed() {
    let mut o = ObligationSet::default();
    assert_eq!(approval_obligation(&o).unwrap(), None);
    o.require_approval = Some(ApprovalObligation {
        roles: vec![],
        reason: "x".into(),
        requirements: vec![],
    });
    assert!(approval_obligation(&o).is_err());
    o.require_approval = Some(ApprovalObligation {
        roles: vec!["ops".into()],
        reason: "x".into(),
        requirements: vec![],
    });
    assert_eq!(approval_obligation(&o).unwrap().unwrap().roles, vec!["ops"]);
}
