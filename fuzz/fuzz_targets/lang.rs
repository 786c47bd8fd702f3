//! cargo fuzz run lang — see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| reefknot_fuzz::lang(data));
