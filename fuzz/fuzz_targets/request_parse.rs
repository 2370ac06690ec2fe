#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| onetrip_protocol::fuzzing::request_parse(data));
