//! The server's fuzz targets in the normal test suite: every committed seed and every
//! input that once crashed a target (`fuzz/regressions/<target>/`) must pass.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in [root.join("seeds").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
    run(b"");
}

#[test]
fn http_server_seeds_and_regressions() {
    replay("http_server", onetrip_server::fuzzing::http_server);
}

#[test]
fn otp_api_json_seeds_and_regressions() {
    replay("otp_api_json", onetrip_server::fuzzing::otp_api_json);
}
