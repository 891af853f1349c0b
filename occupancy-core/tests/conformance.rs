//! The conformance suite (`occupancy_core::testing`) on the memory backend: all of it at once on
//! paused time, and each check as its own test on a multi-thread runtime with real time (the way
//! a networked backend runs it).

use occupancy_core::MemoryBackend;
use occupancy_core::testing;

#[tokio::test(start_paused = true)]
async fn run_all_on_paused_time() {
    testing::run_all(|| async { MemoryBackend::new() }).await;
}

mod each {
    use super::MemoryBackend;
    occupancy_core::conformance_tests!(|| async { MemoryBackend::new() });
}
