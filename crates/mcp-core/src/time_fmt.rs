use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time in UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Formats a timestamp as RFC 3339, the format of every timestamp on the wire.
pub fn rfc3339(t: OffsetDateTime) -> String {
    // Formatting a UTC OffsetDateTime as RFC 3339 only fails for years
    // outside 0..=9999, which `now()` cannot produce; fall back to the
    // Unix timestamp rather than panic.
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
