//! One protocol v1 frame from a client: parse, re-encode, dispatch against a machine, reply.
//! See `occupancy_core::testing::fuzz::protocol_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| occupancy_core::testing::fuzz::protocol_frame(data));
