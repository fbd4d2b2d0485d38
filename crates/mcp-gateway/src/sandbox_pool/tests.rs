//! `[sandbox.pool]` validation.

use super::*;

#[test]
fn the_default_is_off_and_valid() {
    let pool = RawPool::default();
    let mut problems = Vec::new();
    pool.validate(&mut problems);
    assert_eq!(problems, Vec::<String>::new());
    assert!(!pool.enabled());
    assert_eq!(pool.max_total, DEFAULT_MAX_TOTAL);
}

#[test]
fn oversized_pools_and_a_zero_bound_are_refused() {
    let pool = RawPool {
        sizes: BTreeMap::from([("default".to_owned(), MAX_POOL_SIZE + 1)]),
        max_total: 0,
        stub: PathBuf::new(),
    };
    let mut problems = Vec::new();
    pool.validate(&mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("sandbox.pool.sizes.default = 65"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("sandbox.pool.max_total"),
        "{problems:?}"
    );
}

#[test]
fn the_keys_parse_from_toml() {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    let parse = |s: &str| {
        Figment::from(Toml::string(s))
            .extract::<RawPool>()
            .map_err(Box::new)
    };
    let pool = parse("sizes = { default = 2 }\nmax_total = 4").unwrap();
    assert!(pool.enabled());
    assert_eq!(pool.sizes.get("default"), Some(&2));
    assert_eq!(pool.max_total, 4);
    assert!(parse("size = 2").is_err());
}
