//! Shared settings of the micro-benchmarks: short measurements, so that the
//! whole suite runs in a few minutes on a shared 2-core machine.

use std::time::Duration;

use criterion::Criterion;

pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args()
}
