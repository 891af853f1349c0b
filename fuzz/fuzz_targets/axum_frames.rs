//! One client's WebSocket frames through the axum adapter's frame gate and dispatch, against a
//! real Hub. See `occupancy_axum::testing::fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| occupancy_axum::testing::fuzz::frames(data));
