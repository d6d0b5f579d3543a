//! Fuzz target: an HTTP request's content type, query and body through `Params::parse`
//! (`imd::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imd::fuzzing::http_params(data));
