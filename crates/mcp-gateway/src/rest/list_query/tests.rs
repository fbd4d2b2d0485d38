#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn repeated_metadata_parameters_are_taken_out_and_decoded() {
    let (meta, rest) =
        split_metadata("limit=2&metadata=team%3Ainfra&status=running&metadata=url:a%20b:c");
    assert_eq!(meta, owned(&["team:infra", "url:a b:c"]));
    assert_eq!(rest, "limit=2&status=running");
    let q: ListQuery = serde_urlencoded::from_str(&rest).expect("the rest reads as a ListQuery");
    assert_eq!(q.limit, Some(2));
    assert!(q.metadata.is_empty());

    let (meta, rest) = split_metadata("");
    assert!(meta.is_empty());
    assert_eq!(rest, "");
}

#[test]
fn pairs_split_at_the_first_colon() {
    let f = metadata_filter(&owned(&["team:infra", "url:http://x", "empty:"])).unwrap();
    let want: BTreeMap<String, String> = [("empty", ""), ("team", "infra"), ("url", "http://x")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(f, want);
    assert!(metadata_filter(&[]).unwrap().is_empty());
}

#[test]
fn malformed_pairs_are_refused_naming_the_field() {
    for (values, needle) in [
        (owned(&["team"]), "is not `key:value`"),
        (owned(&[":infra"]), "empty key"),
        (owned(&["team:a", "team:b"]), "more than once"),
        (owned(&["team:a", "team:a"]), "more than once"),
    ] {
        match metadata_filter(&values) {
            Err(GatewayError::MalformedRequest { field, reason }) => {
                assert_eq!(field.as_deref(), Some("metadata"));
                assert!(reason.contains(needle), "{values:?}: {reason}");
            }
            other => panic!("{values:?}: {other:?}"),
        }
    }
}
