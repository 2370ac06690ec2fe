//! Response target: the client reading arbitrary responses, mutated genuine ones, and
//! bodies of any content sealed under its real response or failure key.

use std::sync::OnceLock;

use super::handshake::{grant_token, open_response, outcome_is, reply, REPLY_KINDS};
use super::{spec, world, FuzzRng, Input, Mutation, NOW};
use crate::backend::{CryptoBackend, DefaultBackend, TAG_LEN};
use crate::handshake::client::{AwaitingResponse, ClientHandshake, HandshakeError, Outcome};
use crate::handshake::*;
use crate::secret::Secret;
use crate::token::Token;

/// What the client must read from a genuine response.
enum Expect {
    /// The sealed reply `reply(kind, ..)` under the response key.
    Sealed(u8),
    /// `auth_failed` under the failure key.
    Failure,
    /// The signed "server key changed".
    KeyChanged,
}

type Start = (ClientHandshake, Secret<32>, [u8; REQUEST_NONCE_LEN]);

/// Clients, responses and keys for `response_open`.
struct Responses {
    /// A pending handshake for which no genuine response is ever computed.
    raw: Start,
    /// A pending handshake and every kind of genuine response to it.
    genuine: Start,
    responses: Vec<([u8; RESPONSE_LEN], Expect)>,
    /// §4.3's response and failure keys of the genuine request.
    response_key: Secret<32>,
    failure_key: Secret<32>,
    token: Token,
    session_key: Secret<32>,
}

const DESTINATION: &str = "o***@example.com";

fn operation() -> [u8; OPERATION_ID_LEN] {
    super::fuzz_input("operation")
}

fn start(s: &Start) -> (AwaitingResponse, [u8; REQUEST_LEN]) {
    let mut request = [0u8; REQUEST_LEN];
    let pending =
        s.0.start_with_ephemeral(&ClientRequest::default(), NOW, &s.1, &s.2, &mut request)
            .expect("an empty request always fits");
    (pending, request)
}

fn responses() -> &'static Responses {
    static RESPONSES: OnceLock<Responses> = OnceLock::new();
    RESPONSES.get_or_init(|| {
        let w = world();
        let backend = DefaultBackend::default();
        let client = || ClientHandshake::with_server_key(backend, &w.registered, w.entry, w.identity).expect("valid");
        let raw = (client(), Secret::new(super::fuzz_input("raw ephemeral")), super::fuzz_input("raw nonce"));
        let genuine =
            (client(), Secret::new(super::fuzz_input("genuine ephemeral")), super::fuzz_input("genuine nonce"));
        let (_, request) = start(&genuine);
        let verifier = w.registered.verifier(&backend).expect("valid");
        let ss = w.responder.static_static(&w.entry.key_id, &verifier).expect("held");
        let (token, session_key) = grant_token(w, w.registered.id(), "", false, b"response_open");
        let mut rng = FuzzRng::new(b"response_open");
        let mut responses = Vec::new();
        for kind in 0..REPLY_KINDS {
            let mut out = [0u8; RESPONSE_LEN];
            match w.responder.open_request(&request, NOW).map(|o| o.authenticate(&ss)) {
                Ok(Ok(auth)) => {
                    auth.respond(&reply(kind, &token, &session_key, operation(), DESTINATION), NOW, &mut rng, &mut out)
                }
                _ => unreachable!("the genuine request authenticates"),
            }
            responses.push((out, Expect::Sealed(kind)));
        }
        let mut out = [0u8; RESPONSE_LEN];
        let dummy = w.responder.dummy_static_static(&w.entry.key_id, None);
        match w.responder.open_request(&request, NOW).map(|o| o.authenticate(&dummy)) {
            Ok(Err(rejected)) => rejected.respond(NOW, &mut rng, &mut out),
            _ => unreachable!("the dummy never authenticates"),
        }
        responses.push((out, Expect::Failure));
        let mut out = [0u8; RESPONSE_LEN];
        w.responder.server_key_changed(&request, NOW, &mut out).expect("a key is current");
        responses.push((out, Expect::KeyChanged));

        let keys = spec::Keys::server_side(&w.server_static, &w.entry.public, verifier.as_bytes(), &request);
        let (response_key, failure_key) = (keys.response(&request), keys.failure(&request));
        assert!(open_response(&response_key, &responses[0].0).is_some(), "§4.3's response_key does not open");
        assert!(open_response(&failure_key, &responses[REPLY_KINDS as usize].0).is_some(), "§4.3's failure key");
        Responses { raw, genuine, responses, response_key, failure_key, token, session_key }
    })
}

/// `response_open`: the client reading responses.
///
/// Layout: `mode` (mod 3). 0: the rest is a response to a pending handshake no
/// genuine response exists for. 1: `which` genuine response (every status, the
/// failure key's `auth_failed`, a signed "server key changed"), then mutations of its
/// bytes. 2: `reply kind`, `key` (bit 0: the failure key, else the response key),
/// `nonce[12]`, then mutations of the plaintext body, sealed under that real key —
/// what a malicious or buggy server could send.
///
/// Property: arbitrary bytes never yield an `Ok` (least of all `Granted`), and the
/// error is the one the header dictates; a genuine response reads back exactly as
/// sent iff unmutated; a sealed body is accepted iff §5.1–§5.2's client decoding
/// accepts it, and then reads back exactly its fields (else `ResponseInvalid`).
pub fn response_open(data: &[u8]) {
    let r = responses();
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => {
            let (pending, _) = start(&r.raw);
            let response = input.rest();
            let result = pending.finish(response);
            match check_header::<RESPONSE_LEN>(response, &[MSG_AUTH_RESPONSE, MSG_SERVER_KEY_CHANGED]) {
                Err(e) => assert_eq!(result.err(), Some(HandshakeError::Wire(e))),
                Ok((_, MSG_AUTH_RESPONSE)) => assert_eq!(result.err(), Some(HandshakeError::ResponseUnreadable)),
                Ok(_) => assert_eq!(result.err(), Some(HandshakeError::KeyChangedSignature)),
            }
        }
        1 => {
            let (bytes, expect) = &r.responses[usize::from(input.byte()) % r.responses.len()];
            let mut response = *bytes;
            for m in Mutation::list(input.rest()) {
                m.apply(&mut response);
            }
            let (pending, _) = start(&r.genuine);
            let result = pending.finish(&response);
            if response != *bytes {
                assert!(result.is_err(), "a changed response was accepted: {result:?}");
                return;
            }
            let outcome = result.expect("a genuine response reads");
            let matches = match *expect {
                Expect::Sealed(kind) => {
                    outcome_is(&outcome, &reply(kind, &r.token, &r.session_key, operation(), DESTINATION))
                }
                Expect::Failure => matches!(outcome, Outcome::AuthFailed),
                Expect::KeyChanged => matches!(outcome,
                    Outcome::ServerKeyChanged { current_key_id, server_time }
                        if current_key_id == world().entry.key_id && server_time == NOW),
            };
            assert!(matches, "genuine response read as {outcome:?}");
        }
        _ => sealed_body(r, input),
    }
}

fn sealed_body(r: &Responses, mut input: Input<'_>) {
    let kind = input.byte();
    let authenticated = input.byte() & 1 == 0;
    let nonce = input.array::<RESPONSE_NONCE_LEN>();
    let mut body = [0u8; RESPONSE_BODY_LEN];
    reply(kind, &r.token, &r.session_key, operation(), DESTINATION).encode(NOW, &mut body);
    for m in Mutation::list(input.rest()) {
        m.apply(&mut body);
    }
    let accept = spec::body_accepted(&body, authenticated);

    let b = DefaultBackend::default();
    let key = if authenticated { &r.response_key } else { &r.failure_key };
    let mut response = [0u8; RESPONSE_LEN];
    response[..2].copy_from_slice(&[crate::VERSION, MSG_AUTH_RESPONSE]);
    response[OFF_RESPONSE_NONCE..OFF_RESPONSE_BODY].copy_from_slice(&nonce);
    let (aad, rest) = response.split_at_mut(OFF_RESPONSE_BODY);
    let (sealed, tag) = rest.split_at_mut(RESPONSE_BODY_LEN);
    sealed.copy_from_slice(&body);
    let tag: &mut [u8; TAG_LEN] = tag.try_into().expect("16-byte tag");
    b.seal(&b.aead_key(key), &nonce, aad, sealed, tag);

    let (pending, _) = start(&r.genuine);
    match (pending.finish(&response), accept) {
        (Ok(outcome), Some(matches)) => assert!(matches(&outcome), "body read as {outcome:?}"),
        (Err(HandshakeError::ResponseInvalid(_)), None) => {}
        (result, accept) => panic!("client read {result:?}; §5.2 says accepted: {}", accept.is_some()),
    };
}
