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

/// The same suite on the sharded in-memory backend (4 shards: most rooms of a test land in
/// different shards, so a session spans several).
mod sharded {
    use occupancy_core::{ShardedBackend, testing};

    #[tokio::test(start_paused = true)]
    async fn run_all_on_paused_time() {
        testing::run_all(|| async { ShardedBackend::new(4).unwrap() }).await;
    }

    mod each {
        use occupancy_core::ShardedBackend;
        occupancy_core::conformance_tests!(|| async { ShardedBackend::new(4).unwrap() });
    }
}
