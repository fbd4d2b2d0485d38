use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use super::grpc_deadline;

fn deadline(value: &str) -> Option<Duration> {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
    grpc_deadline(&headers)
}

#[test]
fn grpc_timeouts_parse_in_every_unit() {
    assert_eq!(deadline("2H"), Some(Duration::from_secs(7200)));
    assert_eq!(deadline("3M"), Some(Duration::from_secs(180)));
    assert_eq!(deadline("30S"), Some(Duration::from_secs(30)));
    assert_eq!(deadline("300m"), Some(Duration::from_millis(300)));
    assert_eq!(
        deadline("99999999u"),
        Some(Duration::from_micros(99_999_999))
    );
    assert_eq!(deadline("5n"), Some(Duration::from_nanos(5)));
    assert_eq!(grpc_deadline(&HeaderMap::new()), None);
}

/// Malformed values are ignored (no deadline), as tonic's server does.
#[test]
fn malformed_grpc_timeouts_are_ignored() {
    for bad in [
        "",
        "S",
        "100",
        "123456789S",
        "10s",
        "-1S",
        "1.5S",
        " 1S",
        "1 S",
    ] {
        assert_eq!(deadline(bad), None, "{bad:?}");
    }
}
