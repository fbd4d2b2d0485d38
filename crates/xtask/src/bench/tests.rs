use super::HostCpu;

#[test]
fn steal_is_the_share_of_all_cpu_time_between_two_samples() {
    // user nice system idle iowait irq softirq steal guest guest_nice
    let a = HostCpu::parse("cpu  100 0 50 800 10 0 0 40 7 0\ncpu0 1 2 3\n").unwrap();
    let b = HostCpu::parse("cpu  160 0 90 900 10 0 0 90 9 0\ncpu0 1 2 3\n").unwrap();
    assert_eq!(a.total, 1000);
    assert_eq!(a.steal, 40);
    // 250 ticks passed, 50 of them stolen; guest time is not counted twice.
    assert!((a.steal_pct(&b) - 20.0).abs() < 1e-9);
    assert_eq!(b.steal_pct(&a), 0.0);
    assert_eq!(a.steal_pct(&a), 0.0);
}

#[test]
fn a_kernel_without_a_steal_field_gives_no_sample() {
    assert!(HostCpu::parse("cpu  1 2 3 4\n").is_none());
    assert!(HostCpu::parse("intr 5\n").is_none());
}
