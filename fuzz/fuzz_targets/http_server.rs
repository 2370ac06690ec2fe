#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| onetrip_server::fuzzing::http_server(data));
