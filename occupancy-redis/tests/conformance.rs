//! The shared conformance suite (`occupancy_core::testing`) on [`RedisBackend`]: one test per
//! rule, each on its own redis-server.

mod common;

occupancy_core::conformance_tests!(common::owned);
