//! The state machine driven by an operation byte-stream, with the invariant checks of the
//! property test: see `occupancy_core::testing::fuzz::machine_ops`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| occupancy_core::testing::fuzz::machine_ops(data));
