//! Fuzz target: a WebSocket text frame through the client-frame parser (`imd::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imd::fuzzing::client_frame(data));
