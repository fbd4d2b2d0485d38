#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use mcp_core::{ExecRequest, RequestLimits, TaskId};
use tokio::time::Instant;

use super::*;

#[test]
fn bucket_refills_at_the_rate_and_answers_the_wait() {
    let t0 = Instant::now();
    let mut b = Bucket::full(2, t0);
    assert!(b.take(2, t0).is_ok());
    assert!(b.take(2, t0).is_ok());
    // Empty: 2 per minute = one token every 30 s.
    let wait = b.take(2, t0).unwrap_err();
    assert_eq!(retry_secs(wait), 30);
    // Half-way the wait has halved.
    let wait = b.take(2, t0 + Duration::from_secs(15)).unwrap_err();
    assert_eq!(retry_secs(wait), 15);
    assert!(b.take(2, t0 + Duration::from_secs(30)).is_ok());
    // It never holds more than its capacity.
    let later = t0 + Duration::from_secs(3600);
    assert!(b.take(2, later).is_ok());
    assert!(b.take(2, later).is_ok());
    assert!(b.take(2, later).is_err());
}

fn quotas(default: RawTenantQuota) -> Arc<Quotas> {
    Quotas::new(QuotaSettings {
        default,
        tenants: [(
            "big".to_owned(),
            RawTenantQuota {
                max_concurrent_tasks: 10,
                ..Default::default()
            },
        )]
        .into(),
        idempotency_window: Duration::from_secs(60),
    })
}

#[test]
fn concurrency_slots_are_per_tenant_and_released_on_drop() {
    let q = quotas(RawTenantQuota {
        max_concurrent_tasks: 1,
        ..Default::default()
    });
    let p = q.acquire("acme", TaskId::new()).unwrap();
    match q.acquire("acme", TaskId::new()) {
        Err(GatewayError::QuotaExceeded {
            quota, limit: 1, ..
        }) => assert_eq!(quota, "concurrent tasks"),
        other => panic!("expected a quota error, got {other:?}"),
    }
    // Another tenant, and a tenant with its own quota, are not affected.
    let _other = q.acquire("other", TaskId::new()).unwrap();
    let _b1 = q.acquire("big", TaskId::new()).unwrap();
    let _b2 = q.acquire("big", TaskId::new()).unwrap();
    assert_eq!(q.active("acme").len(), 1);
    drop(p);
    assert!(q.active("acme").is_empty());
    assert!(q.acquire("acme", TaskId::new()).is_ok());
}

#[test]
fn rate_is_refused_with_a_retry_after() {
    let q = quotas(RawTenantQuota {
        tasks_per_minute: 1,
        ..Default::default()
    });
    q.charge_rate("acme").unwrap();
    let err = q.charge_rate("acme").unwrap_err();
    // Recovery over time is `bucket_refills_at_the_rate_and_answers_the_wait`.
    assert!(matches!(err.retry_after_secs(), Some(59 | 60)), "{err:?}");
    // RESOURCE_EXHAUSTED / 429 at the front doors (mcp-gateway's mapping).
    assert!(
        matches!(
            err,
            GatewayError::QuotaExceeded {
                quota: "tasks per minute",
                limit: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.number(), 4101);
    q.charge_rate("other").unwrap();
}

#[test]
fn cpu_budget_refuses_at_the_budget_and_answers_what_is_left() {
    let q = quotas(RawTenantQuota {
        cpu_seconds_per_hour: 10,
        ..Default::default()
    });
    assert_eq!(
        q.check_cpu("acme", 4_000).unwrap(),
        Some(Duration::from_secs(6))
    );
    assert!(matches!(
        q.check_cpu("acme", 10_000),
        Err(GatewayError::QuotaExceeded { limit: 10, .. })
    ));
    assert_eq!(
        q.check_cpu("big", 1_000_000).unwrap(),
        None,
        "no budget set"
    );
}

fn valid() -> mcp_core::ValidExec {
    ExecRequest {
        command: "echo".into(),
        timeout_secs: 100,
        ..Default::default()
    }
    .validate(&RequestLimits::default())
    .unwrap()
}

#[test]
fn limits_only_tighten() {
    let mut v = valid();
    v.sandbox.limits.memory_bytes = 1 << 20;
    v.sandbox.limits.pids = 500;
    let l = mcp_policy::LimitsObligation {
        cpu_limit: Some(0.5),
        memory_bytes: Some(64 << 20),
        pids: Some(32),
        timeout_secs: Some(10),
    };
    apply_limits(&mut v, &l).unwrap();
    assert_eq!(v.sandbox.limits.cpu_limit, 0.5, "unset takes the policy's");
    assert_eq!(
        v.sandbox.limits.memory_bytes,
        1 << 20,
        "a tighter request stays"
    );
    assert_eq!(v.sandbox.limits.pids, 32, "a looser request is clamped");
    assert_eq!(v.timeout, Duration::from_secs(10));

    let mut v = valid();
    v.timeout = Duration::from_secs(5);
    apply_limits(
        &mut v,
        &mcp_policy::LimitsObligation {
            timeout_secs: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(v.timeout, Duration::from_secs(5));
    assert!(
        apply_limits(
            &mut v,
            &mcp_policy::LimitsObligation {
                memory_bytes: Some(0),
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn idempotency_keys_are_bounded_and_hashes_tell_requests_apart() {
    assert_eq!(idempotency_key(Some(String::new())).unwrap(), None);
    assert_eq!(idempotency_key(Some("k".into())).unwrap(), Some("k".into()));
    assert!(idempotency_key(Some("a\nb".into())).is_err());
    assert!(idempotency_key(Some("x".repeat(MAX_IDEMPOTENCY_KEY + 1))).is_err());
    let a = ExecRequest {
        command: "echo".into(),
        ..Default::default()
    };
    let mut b = a.clone();
    assert_eq!(request_hash(&a), request_hash(&b));
    b.args.push("x".into());
    assert_ne!(request_hash(&a), request_hash(&b));
}

#[test]
fn config_rejects_a_zero_window() {
    let mut problems = Vec::new();
    RawQuotas {
        idempotency_window_secs: 0,
        ..Default::default()
    }
    .validate(&mut problems);
    assert_eq!(problems.len(), 1);
}
