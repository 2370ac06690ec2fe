//! Unit tests of the sans-IO core, driven against the protocol's `Responder` (through
//! the shared fake server) with no network, no files and an explicit clock.

#[path = "../tests/common/fake.rs"]
mod fake;

use fake::{FakeServer, AUDIENCE, DESTINATION, OPERATION};
use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::{ApiKey, Channel, DocumentError, HandshakeError, PopProof, SecondFactor};
use rand_core::OsRng;

use super::*;

const NOW: u64 = 1_790_000_000;

fn api_key() -> ApiKey {
    ApiKey::generate(&mut OsRng)
}

fn core_for(server: &FakeServer, key: &ApiKey) -> ClientCore {
    ClientCore::new(
        DefaultBackend::default(),
        key.clone(),
        TrustAnchor::Pinned(server.fingerprint()),
        AUDIENCE.into(),
        "db:read".into(),
    )
}

fn load_document(core: &mut ClientCore, server: &FakeServer, local_now: u64) {
    let checked = core.check_document(&server.document(NOW)).unwrap();
    core.accept_document(checked, local_now).unwrap();
}

/// One round trip: begin at the client's `local_now`, answer at server `NOW`.
fn round(core: &mut ClientCore, flight: &mut Flight, server: &mut FakeServer, local_now: u64) -> Result<Step, Error> {
    round_with(core, flight, server, local_now, None)
}

fn round_with(
    core: &mut ClientCore,
    flight: &mut Flight,
    server: &mut FakeServer,
    local_now: u64,
    second_factor: Option<SecondFactor<'_>>,
) -> Result<Step, Error> {
    let (request, pending) = core.begin(local_now, &mut OsRng, second_factor)?;
    let response = server.answer(&request, NOW);
    core.complete(flight, pending, &response, local_now)
}

fn granted(step: Result<Step, Error>) -> AccessToken {
    match step {
        Ok(Step::Granted(t)) => t,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn a_grant_yields_a_token_the_resource_server_accepts() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let mut core = core_for(&server, &key);
    assert!(core.needs_document(NOW));
    load_document(&mut core, &server, NOW);
    let token = granted(round(&mut core, &mut Flight::default(), &mut server, NOW));
    assert_eq!((token.issued_at(), token.expires_at()), (NOW, NOW + 900));
    assert!(!token.second_factor());
    let signed = token.sign("CONNECT", "orders", b"startup", NOW).unwrap();
    assert!(signed.authorization().starts_with("Onetrip "));
    let proof = PopProof::from_header(signed.pop()).unwrap();
    let claims = server
        .verifier()
        .verify_request(signed.token().as_bytes(), &proof, "CONNECT", "orders", b"startup", NOW, 60)
        .unwrap();
    assert_eq!((claims.audience(), claims.scopes()), (AUDIENCE, "db:read"));
    assert!(server
        .verifier()
        .verify_request(token.token().as_bytes(), &proof, "CONNECT", "x", b"startup", NOW, 60)
        .is_err());
}

#[test]
fn the_token_is_fresh_until_eighty_percent_and_a_fallback_until_ninety_five() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    server.ttl = 100;
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    let token = granted(round(&mut core, &mut Flight::default(), &mut server, NOW));
    assert_eq!(token.refresh_at(), NOW + 80);
    assert!(core.fresh_token(NOW + 79).is_some());
    assert!(core.fresh_token(NOW + 80).is_none());
    assert!(core.fallback_token(NOW + 94).is_some());
    assert!(core.fallback_token(NOW + 95).is_none());
    assert!(token.is_valid(NOW + 99) && !token.is_valid(NOW + 100));
    core.invalidate_token();
    assert!(core.fresh_token(NOW).is_none());
}

#[test]
fn a_pin_mismatch_names_both_fingerprints() {
    let key = api_key();
    let server = FakeServer::new(&key, NOW);
    let impostor = FakeServer::new(&key, NOW);
    let core = core_for(&server, &key);
    let err = core.check_document(&impostor.document(NOW)).unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, Error::ServerIdentityChanged { expected, found }
            if expected == server.fingerprint() && found == impostor.fingerprint()));
    assert!(shown.contains(&server.fingerprint().to_string()) && shown.contains(&impostor.fingerprint().to_string()));
}

#[test]
fn first_use_is_remembered_and_a_later_identity_refused() {
    let key = api_key();
    let server = FakeServer::new(&key, NOW);
    let other = FakeServer::new(&key, NOW);
    let mut core = ClientCore::new(
        DefaultBackend::default(),
        key.clone(),
        TrustAnchor::FirstUse(None),
        String::new(),
        String::new(),
    );
    let checked = core.check_document(&server.document(NOW)).unwrap();
    assert_eq!(checked.first_use(), Some(server.fingerprint()));
    core.accept_document(checked, NOW).unwrap();
    assert_eq!(core.trust(), TrustAnchor::FirstUse(Some(server.fingerprint())));
    assert_eq!(core.check_document(&server.document(NOW)).unwrap().first_use(), None);
    let err = core.check_document(&other.document(NOW)).unwrap_err();
    assert!(matches!(err, Error::ServerIdentityChanged { expected, .. } if expected == server.fingerprint()));
}

#[test]
fn a_forged_or_garbage_document_is_refused() {
    let key = api_key();
    let server = FakeServer::new(&key, NOW);
    let core = core_for(&server, &key);
    let mut doc = server.document(NOW);
    doc[60] ^= 1;
    assert!(matches!(core.check_document(&doc), Err(Error::Document(DocumentError::Signature))));
    assert!(matches!(core.check_document(b"garbage"), Err(Error::Document(_))));
}

#[test]
fn clock_skew_is_corrected_once_per_flight() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let mut core = core_for(&server, &key);
    let local = NOW + 300; // five minutes fast
    load_document(&mut core, &server, local);
    let mut flight = Flight::default();
    assert!(matches!(round(&mut core, &mut flight, &mut server, local), Ok(Step::RetryWithClock)));
    assert_eq!(core.clock_offset(), -300);
    let token = granted(round(&mut core, &mut flight, &mut server, local));
    // The proof is written in server time although the local clock is fast.
    let signed = token.sign("GET", "/", b"", local).unwrap();
    assert_eq!(signed.proof().timestamp(), NOW);

    // A server whose clock jumps again within the same flight: no second correction.
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, local);
    let mut flight = Flight::default();
    assert!(matches!(round(&mut core, &mut flight, &mut server, local), Ok(Step::RetryWithClock)));
    let (request, pending) = core.begin(local, &mut OsRng, None).unwrap();
    let response = server.answer(&request, NOW + 600);
    assert!(matches!(core.complete(&mut flight, pending, &response, local), Err(Error::ClockSkew)));
}

#[test]
fn a_far_behind_clock_starts_from_the_document_issue_time() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let mut core = core_for(&server, &key);
    let local = NOW - 2 * 86_400; // no handshake key is valid yet at this time
    load_document(&mut core, &server, local);
    assert_eq!(core.clock_offset(), 2 * 86_400);
    granted(round(&mut core, &mut Flight::default(), &mut server, local));
}

#[test]
fn server_key_changed_means_one_refetch_per_flight() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    server.rotate(NOW);
    let mut flight = Flight::default();
    assert!(matches!(round(&mut core, &mut flight, &mut server, NOW), Ok(Step::RefetchDocument)));
    assert!(core.needs_document(NOW));
    assert!(matches!(core.begin(NOW, &mut OsRng, None), Err(Error::Config(_))));
    load_document(&mut core, &server, NOW);
    granted(round(&mut core, &mut flight, &mut server, NOW));

    server.always_key_changed = true;
    let mut flight = Flight::default();
    assert!(matches!(round(&mut core, &mut flight, &mut server, NOW), Ok(Step::RefetchDocument)));
    load_document(&mut core, &server, NOW);
    assert!(matches!(round(&mut core, &mut flight, &mut server, NOW), Err(Error::ServerKeyChanged)));
}

#[test]
fn a_key_changed_answer_from_another_identity_is_refused() {
    let key = api_key();
    let server = FakeServer::new(&key, NOW);
    let mut impostor = FakeServer::new(&key, NOW);
    impostor.always_key_changed = true;
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    let (request, pending) = core.begin(NOW, &mut OsRng, None).unwrap();
    let response = impostor.answer(&request, NOW);
    let err = core.complete(&mut Flight::default(), pending, &response, NOW).unwrap_err();
    assert!(matches!(err, Error::Protocol(HandshakeError::KeyChangedSignature)), "{err}");
    assert!(!core.needs_document(NOW), "a forged answer changes nothing");
}

#[test]
fn the_second_factor_flow_and_a_wrong_code() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    server.otp_code = Some("123456".into());
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    let err = round(&mut core, &mut Flight::default(), &mut server, NOW).unwrap_err();
    let Error::SecondFactorRequired { operation, channel, ref destination } = err else { panic!("{err}") };
    assert_eq!((operation, channel, destination.as_str()), (OPERATION, Channel::Console, DESTINATION));
    assert!(err.to_string().contains("console") && err.to_string().contains(DESTINATION), "{err}");

    let wrong = SecondFactor { operation, code: "654321" };
    let err = round_with(&mut core, &mut Flight::default(), &mut server, NOW, Some(wrong)).unwrap_err();
    assert!(matches!(err, Error::SecondFactorFailed { attempts_left: 2 }));
    assert!(!format!("{err} {err:?}").contains("654321"));

    let right = SecondFactor { operation, code: "123456" };
    let token = granted(round_with(&mut core, &mut Flight::default(), &mut server, NOW, Some(right)));
    assert!(token.second_factor());
    let too_short = SecondFactor { operation, code: "12" };
    assert!(matches!(core.begin(NOW, &mut OsRng, Some(too_short)), Err(Error::InvalidRequest(_))));
}

#[test]
fn refusals_map_to_typed_errors() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let stranger = api_key();
    let mut core = core_for(&server, &stranger);
    load_document(&mut core, &server, NOW);
    assert!(matches!(round(&mut core, &mut Flight::default(), &mut server, NOW), Err(Error::AuthFailed)));

    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    type Expect = fn(&Error) -> bool;
    let cases: [(Reply<'static>, Expect); 4] = [
        (Reply::ScopeDenied, |e| matches!(e, Error::ScopeDenied)),
        (Reply::ServerError, |e| matches!(e, Error::ServerError)),
        (Reply::Malformed, |e| matches!(e, Error::Malformed)),
        (
            Reply::RateLimited { retry_after_secs: 7 },
            |e| matches!(e, Error::RateLimited { retry_after } if retry_after.as_secs() == 7),
        ),
    ];
    for (reply, expected) in cases {
        server.force = Some(reply);
        let err = round(&mut core, &mut Flight::default(), &mut server, NOW).unwrap_err();
        assert!(expected(&err), "{reply:?} gave {err}");
    }
}

#[test]
fn bytes_that_are_not_an_answer_to_this_request_are_refused() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    let (_, pending) = core.begin(NOW, &mut OsRng, None).unwrap();
    let err = core.complete(&mut Flight::default(), pending, b"short", NOW).unwrap_err();
    assert!(matches!(err, Error::Protocol(HandshakeError::Wire(_))), "{err}");
    // The answer to another request of the same client does not open.
    let (first, _) = core.begin(NOW, &mut OsRng, None).unwrap();
    let (_, second) = core.begin(NOW, &mut OsRng, None).unwrap();
    let response = server.answer(&first, NOW);
    let err = core.complete(&mut Flight::default(), second, &response, NOW).unwrap_err();
    assert!(matches!(err, Error::Protocol(HandshakeError::ResponseUnreadable)), "{err}");
}

#[test]
fn debug_output_holds_no_secret() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    let token = granted(round(&mut core, &mut Flight::default(), &mut server, NOW));
    let signed = token.sign("GET", "/", b"", NOW).unwrap();
    let shown = format!("{core:?} {token:?} {signed:?}");
    let encoded = key.encode();
    assert!(!shown.contains(&encoded[4..]), "{shown}");
    assert!(!shown.contains(token.token().to_base64().as_str()), "{shown}");
    assert!(!shown.contains(signed.pop()), "{shown}");
}

#[test]
fn a_document_past_its_expiry_is_refetched_and_a_stale_copy_refused() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    server.document_lifetime = 600;
    let mut core = core_for(&server, &key);
    load_document(&mut core, &server, NOW);
    assert!(!core.needs_document(NOW + 600), "usable up to and including expires_at");
    let later = NOW + 601;
    assert!(core.needs_document(later), "past expires_at the document is fetched again");
    let err = core.begin(later, &mut OsRng, None).unwrap_err();
    assert!(
        matches!(err, Error::Document(DocumentError::Expired { expires_at, now }) if expires_at == NOW + 600 && now == later),
        "{err}"
    );
    // The server (or someone replaying it) answers the refetch with the same copy.
    let stale = core.check_document(&server.document(NOW)).unwrap();
    let err = core.accept_document(stale, later).unwrap_err();
    assert!(matches!(err, Error::Document(DocumentError::Expired { .. })), "{err}");
    assert!(core.needs_document(later), "nothing of the stale copy is kept");
    // A freshly signed document works.
    let fresh = core.check_document(&server.document(later)).unwrap();
    core.accept_document(fresh, later).unwrap();
    let (request, pending) = core.begin(later, &mut OsRng, None).unwrap();
    let response = server.answer(&request, later);
    granted(core.complete(&mut Flight::default(), pending, &response, later));
}

#[test]
fn a_document_captured_before_a_rotation_cannot_steer_the_client_after_it_expires() {
    let key = api_key();
    let mut server = FakeServer::new(&key, NOW);
    // Captured before the rotation: it names the old key, valid (in the document)
    // until NOW + 86_400. The server then rotates; the old private key is what an
    // attacker holds from a backup, and the attacker replays the old document.
    let captured = server.document(NOW);
    let old_key_id = ServerKeyDocument::parse(&captured).unwrap().entries()[0].key_id;
    let later = NOW + onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS + 1;
    server.rotate(later);
    let mut core = core_for(&server, &key);
    let err = core.accept_document(core.check_document(&captured).unwrap(), later).unwrap_err();
    assert!(matches!(err, Error::Document(DocumentError::Expired { .. })), "{err}");
    assert!(matches!(core.begin(later, &mut OsRng, None), Err(Error::Config(_))), "no handshake was prepared");
    // Even a client whose clock is far off cannot be wound back to the copy's issue
    // time by it: the issue-time guess only ever moves the clock forward.
    let err = core.accept_document(core.check_document(&captured).unwrap(), NOW + 3 * 86_400).unwrap_err();
    assert!(matches!(err, Error::Document(DocumentError::Expired { .. })), "{err}");
    assert_eq!(core.clock_offset(), 0);
    // The current document steers to the new key.
    core.accept_document(core.check_document(&server.document(later)).unwrap(), later).unwrap();
    let (request, _) = core.begin(later, &mut OsRng, None).unwrap();
    assert_ne!(request[2..10], old_key_id);
}
