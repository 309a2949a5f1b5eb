//! What the test files share.

/// Nanoseconds per item of `decode`, which decodes `items` items a call:
/// the least of five rounds of `rounds` calls, since the machine's speed
/// moves between runs.
pub fn least_ns_per_item(rounds: u32, items: usize, mut decode: impl FnMut() -> usize) -> f64 {
    (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                assert_eq!(decode(), items);
            }
            started.elapsed().as_nanos() as f64 / (f64::from(rounds) * items as f64)
        })
        .fold(f64::INFINITY, f64::min)
}
