//! The client's fuzz target in the normal test suite: every committed seed and every
//! input that once crashed it (`fuzz/regressions/client_http/`) must pass.

use std::path::Path;

#[test]
fn client_http_seeds_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in [root.join("seeds/client_http"), root.join("regressions/client_http")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            onetrip_client::fuzzing::client_http(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for client_http");
    onetrip_client::fuzzing::client_http(b"");
}
