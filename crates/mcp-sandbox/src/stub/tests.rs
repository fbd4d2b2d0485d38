//! Unit tests of the stub protocol: what is encoded decodes to the same
//! order, and anything malformed is refused without allocating from it.

use super::*;

fn order() -> Order {
    Order {
        argv: vec!["/usr/bin/echo".into(), "a b".into(), String::new()],
        env: vec![
            ("PATH".into(), "/usr/bin".into()),
            ("EMPTY".into(), String::new()),
        ],
        cwd: "x/y".into(),
        limits: Rlimits {
            address_space: 1 << 30,
            nproc: 64,
            nofile: 1024,
            fsize: 1 << 20,
            cpu_secs: 11,
        },
    }
}

fn payload(o: &Order) -> Vec<u8> {
    encode(o).split_off(12)
}

#[test]
fn an_order_round_trips() {
    let o = order();
    let msg = encode(&o);
    assert_eq!(&msg[..8], MAGIC);
    assert_eq!(read_order(&mut msg.as_slice()), Ok(o));
}

#[test]
fn malformed_orders_are_refused() {
    let good = payload(&order());
    let with = |f: &dyn Fn(&mut Order)| {
        let mut o = order();
        f(&mut o);
        decode(&payload(&o))
    };
    assert_eq!(
        decode(&good[..good.len() - 1]),
        Err(BadOrder("truncated order"))
    );
    let mut long = good.clone();
    long.push(7);
    assert_eq!(decode(&long), Err(BadOrder("trailing bytes")));
    assert!(with(&|o| o.argv.clear()).is_err());
    assert!(with(&|o| o.argv[0] = "echo".into()).is_err());
    assert!(with(&|o| o.argv[1] = "a\0b".into()).is_err());
    assert!(with(&|o| o.env[0].0 = "A=B".into()).is_err());
    assert!(with(&|o| o.env[0].0 = String::new()).is_err());
    for cwd in ["/abs", "a/../b", "./a", "a//b", ".."] {
        assert_eq!(
            with(&|o| o.cwd = cwd.into()),
            Err(BadOrder("bad cwd")),
            "{cwd}"
        );
    }
    assert!(with(&|o| o.cwd = String::new()).is_ok());
}

#[test]
fn framing_errors_are_refused() {
    let msg = encode(&order());
    assert_eq!(
        read_order(&mut &b""[..]),
        Err(BadOrder("channel closed before an order"))
    );
    let mut bad = msg.clone();
    bad[0] = b'x';
    assert_eq!(read_order(&mut bad.as_slice()), Err(BadOrder("bad magic")));
    let mut huge = msg.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        read_order(&mut huge.as_slice()),
        Err(BadOrder("order too large"))
    );
    assert_eq!(
        read_order(&mut &msg[..msg.len() - 1]),
        Err(BadOrder("channel closed inside an order"))
    );
}

#[test]
fn a_huge_count_is_refused_before_allocating() {
    let mut p = payload(&order());
    // The argc field follows five u64 limits and the cwd string.
    let at = 40 + 4 + "x/y".len();
    p[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode(&p), Err(BadOrder("count larger than the order")));
}
