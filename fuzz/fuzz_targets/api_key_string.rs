#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| onetrip_protocol::fuzzing::api_key_string(data));
