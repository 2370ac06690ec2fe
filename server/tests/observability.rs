//! What an operator sees of refused traffic: every refusal is counted with its route and
//! reason in `/metrics`, including the ones decided before any cryptography.

mod common;

use common::Server;
use onetrip_protocol::handshake::REQUEST_LEN;

const OCTETS: (&str, &str) = ("content-type", "application/octet-stream");

#[test]
fn per_address_refusals_and_oversized_bodies_are_counted_with_their_reason() {
    let server = Server::start(&["--auth-rate-per-ip", "2"]);
    let statuses: Vec<u16> = (0..6).map(|_| server.post("/v1/auth", &[OCTETS], &[0u8; REQUEST_LEN]).status).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert!(limited >= 3, "the per-address limit of 2/s refuses most of 6 at once: {statuses:?}");
    assert_eq!(server.metric("onetrip_refusals_total{route=\"auth\",code=\"rate_limited\"}"), limited);
    // The ones let through were undecodable (400): refused before cryptography too.
    let undecodable = statuses.iter().filter(|s| **s == 400).count() as u64;
    assert_eq!(undecodable + limited, 6, "{statuses:?}");
    assert_eq!(server.metric("onetrip_handshakes_rejected_total"), 6, "429s and 400s alike");

    let big = server.post("/v1/introspect", &[("content-type", "application/json")], &vec![b' '; 1 << 20]);
    assert_eq!(big.status, 413);
    assert_eq!(server.metric("onetrip_refusals_total{route=\"introspect\",code=\"body_too_large\"}"), 1);

    // Made-up paths share one label: a client cannot grow the metrics.
    for i in 0..5 {
        assert_eq!(server.get(&format!("/nope/{i}")).status, 404);
    }
    assert_eq!(server.metric("onetrip_refusals_total{route=\"other\",code=\"not_found\"}"), 5);
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(!text.contains("/nope"), "no raw path in a label");
}
