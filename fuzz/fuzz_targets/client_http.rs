#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| onetrip_client::fuzzing::client_http(data));
