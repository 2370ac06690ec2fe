//! Request targets: parsing, the server path on requests nobody authorised, and on
//! mutated genuine requests (bytes, or a resealed payload); plus the reply helpers
//! the response and differential targets share.

use std::sync::OnceLock;

use super::{spec, text, text_ok, world, FuzzRng, Input, Mutation, World, AUDIENCE, NOW};
use crate::api_key::{ApiKey, KeyId};
use crate::backend::{CryptoBackend, CryptoError, DefaultBackend, TAG_LEN};
use crate::codec::{field, read_u64};
use crate::handshake::client::{ClientHandshake, HandshakeError, Outcome};
use crate::handshake::server::{RejectReason, Reply, RequestError, StaticStatic};
use crate::handshake::status::Status;
use crate::handshake::*;
use crate::kdf;
use crate::secret::Secret;
use crate::server_key::{verify_signature, SIGNATURE_LEN};
use crate::token::{Claims, Token};

/// `request_parse`: the whole input is a candidate request.
///
/// Property: [`RequestView::parse`] accepts exactly the 384-byte, version-1,
/// type-1 inputs, names the first failing check otherwise, and its view borrows the
/// input's bytes at the documented offsets (PROTOCOL.md §4.1).
pub fn request_parse(data: &[u8]) {
    match RequestView::parse(data) {
        Ok(view) => {
            assert_eq!(data.len(), REQUEST_LEN);
            assert_eq!((data[OFF_VERSION], data[OFF_TYPE]), (crate::VERSION, MSG_AUTH_REQUEST));
            assert_eq!(&view.server_key_id[..], &data[OFF_SERVER_KEY_ID..OFF_EPHEMERAL]);
            assert_eq!(&view.ephemeral[..], &data[OFF_EPHEMERAL..OFF_SEALED_KEY_ID]);
            assert!(core::ptr::eq(view.bytes.as_ptr(), data.as_ptr()), "the view must borrow, not copy");
        }
        Err(WireError::Length { found, expected }) => {
            assert_eq!((found, expected), (data.len(), REQUEST_LEN));
            assert_ne!(data.len(), REQUEST_LEN);
        }
        Err(WireError::Version(v)) => {
            assert_eq!(data.len(), REQUEST_LEN);
            assert_eq!(v, data[OFF_VERSION]);
            assert_ne!(v, crate::VERSION);
        }
        Err(WireError::Type(t)) => {
            assert_eq!((data.len(), data[OFF_VERSION]), (REQUEST_LEN, crate::VERSION));
            assert_eq!(t, data[OFF_TYPE]);
            assert_ne!(t, MSG_AUTH_REQUEST);
        }
    }
}

/// The server's key table for `request_process`: the vectors' registered and
/// unknown key ids and one more, all with fuzz-only secrets that no request in the
/// seeds (or anywhere else) was made with; plus an impostor client per key id.
struct Table {
    ids: Vec<KeyId>,
    /// (server key id, API key id, cached static-static) for every held server key.
    static_statics: Vec<([u8; 8], KeyId, StaticStatic)>,
    impostors: Vec<ClientHandshake>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let w = world();
        let backend = DefaultBackend::default();
        let ids = [
            KeyId::from_bytes(super::vector_input("api key id")),
            KeyId::from_bytes(super::vector_input("unknown key id")),
            KeyId::from_bytes(super::fuzz_input("table key id 2")),
        ];
        let mut static_statics = Vec::new();
        let mut impostors = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let key = ApiKey::from_parts(*id, Secret::new(super::fuzz_input(&format!("table secret {i}"))));
            let verifier = key.verifier(&backend).expect("X25519 accepts every 32-byte key");
            for entry in w.responder.entries() {
                let ss = w.responder.static_static(&entry.key_id, &verifier).expect("held key, valid verifier");
                static_statics.push((entry.key_id, *id, ss));
            }
            let impostor = ApiKey::from_parts(*id, Secret::new(super::fuzz_input("impostor secret")));
            impostors.push(
                ClientHandshake::with_server_key(backend, &impostor, w.entry, w.identity).expect("valid server key"),
            );
        }
        Table { ids: ids.to_vec(), static_statics, impostors }
    })
}

/// `request_process`: the full server path on requests nobody authorised.
///
/// Layout: `mode`. Even: the rest is the request. Odd ("impostor"): `key index`,
/// `ephemeral[32]`, `nonce[16]`, then bytes written over `request[74..]` (payload and
/// tag) of a request a real client built for a key id in the table with the wrong
/// secret.
///
/// Property: open_request → static-static (cached, or the dummy) → authenticate never
/// authenticates; a rejection is `auth_failed` for an unreadable key id or payload
/// only; the errors match the cheap checks; every answer is a well-formed
/// 400-byte response (the type fixes the length; the header, the signed
/// "server key changed" and, for the impostor, the client's reading are checked).
pub fn request_process(data: &[u8]) {
    let w = world();
    let t = table();
    let mut input = Input::new(data);
    let mode = input.byte();
    let mut owned = [0u8; REQUEST_LEN];
    let (request, impostor) = if mode & 1 == 0 {
        (input.rest(), None)
    } else {
        let index = usize::from(input.byte()) % t.ids.len();
        let ephemeral = Secret::new(input.array::<32>());
        let nonce = input.array::<REQUEST_NONCE_LEN>();
        let pending = t.impostors[index]
            .start_with_ephemeral(&ClientRequest::default(), NOW, &ephemeral, &nonce, &mut owned)
            .expect("an empty request always fits");
        let genuine = owned;
        let tail = input.rest();
        let n = tail.len().min(REQUEST_LEN - OFF_SEALED_PAYLOAD);
        owned[OFF_SEALED_PAYLOAD..OFF_SEALED_PAYLOAD + n].copy_from_slice(&tail[..n]);
        (&owned[..], Some((t.ids[index], pending, owned == genuine)))
    };

    let mut out = [0u8; RESPONSE_LEN];
    let opened = match w.responder.open_request(request, NOW) {
        Ok(opened) => opened,
        Err(RequestError::Wire(e)) => {
            assert!(impostor.is_none(), "a client-built request failed to parse: {e}");
            assert_eq!(RequestView::parse(request).err(), Some(e));
            return;
        }
        Err(RequestError::UnknownServerKey) => {
            let view = RequestView::parse(request).expect("parsed before the key lookup");
            assert!(!held_now(w, view.server_key_id), "a held, unexpired server key was called unknown");
            w.responder.server_key_changed(request, NOW, &mut out).expect("a key is current");
            check_key_changed(w, request, &out);
            return;
        }
        Err(RequestError::Crypto(e)) => {
            assert_eq!(e, CryptoError::LowOrderPoint);
            assert!(impostor.is_none(), "a client ephemeral key was refused");
            // §4.3: only a low-order E (all-zero X25519 with any key) is refused.
            let view = RequestView::parse(request).expect("parsed before the X25519");
            assert!(DefaultBackend::default().x25519(&w.server_static, view.ephemeral).is_err());
            return;
        }
        Err(e @ RequestError::KeySet(_)) => panic!("open_request: {e}"),
    };
    assert!(held_now(w, opened.server_key_id()), "a request for an expired or unknown server key was opened");
    if let Some((id, ..)) = &impostor {
        assert_eq!(opened.key_id(), Some(*id), "the server misread a genuinely sealed key id");
    }
    let ss = match t.static_statics.iter().find(|(s, k, _)| s == opened.server_key_id() && Some(*k) == opened.key_id())
    {
        Some((.., ss)) => ss.clone(),
        None => w.responder.dummy_static_static(opened.server_key_id(), opened.key_id().as_ref()),
    };
    let rejected = match opened.authenticate(&ss) {
        Ok(auth) => panic!("an unauthorised request authenticated as {:?}", auth.key_id()),
        Err(rejected) => rejected,
    };
    match rejected.reason() {
        RejectReason::KeyIdUnreadable => assert!(impostor.is_none(), "genuine key id unreadable"),
        RejectReason::PayloadUnreadable => {}
        other => panic!("an unauthenticated request got as far as {other:?}"),
    }
    assert_eq!(rejected.status(), Status::AuthFailed);
    rejected.respond(NOW, &mut FuzzRng::new(data), &mut out);
    assert_eq!((out[OFF_VERSION], out[OFF_TYPE]), (crate::VERSION, MSG_AUTH_RESPONSE));
    if let Some((_, pending, untouched)) = impostor {
        // The impostor can read the failure answer to exactly the request it sent.
        match pending.finish(&out) {
            Ok(Outcome::AuthFailed) => assert!(untouched, "an answer to another request was readable"),
            Err(HandshakeError::ResponseUnreadable) => assert!(!untouched, "the failure answer was unreadable"),
            other => panic!("impostor read {other:?}"),
        }
    }
}

pub(super) fn held_now(w: &World, server_key_id: &[u8; 8]) -> bool {
    w.responder.entries().any(|e| &e.key_id == server_key_id && e.not_after >= NOW)
}

/// A "server key changed" answer (PROTOCOL.md §5.3) to `request`: names the current
/// key, carries `NOW`, is signed by the identity over request[0..42] ‖ answer[0..18],
/// and is zero after the signature.
pub(super) fn check_key_changed(w: &World, request: &[u8], out: &[u8; RESPONSE_LEN]) {
    assert_eq!((out[OFF_VERSION], out[OFF_TYPE]), (crate::VERSION, MSG_SERVER_KEY_CHANGED));
    assert_eq!(field::<K_OFF_CURRENT_KEY_ID, 8, RESPONSE_LEN>(out), &w.entry.key_id);
    assert_eq!(read_u64::<K_OFF_SERVER_TIME, RESPONSE_LEN>(out), NOW);
    let mut signed = request[..OFF_SEALED_KEY_ID].to_vec();
    signed.extend_from_slice(&out[..K_OFF_SIGNATURE]);
    let signature = field::<K_OFF_SIGNATURE, SIGNATURE_LEN, RESPONSE_LEN>(out);
    assert!(verify_signature(&w.identity, kdf::SIGN_CONTEXT_KEY_CHANGED, &signed, signature));
    assert!(out[K_OFF_SIGNATURE + SIGNATURE_LEN..].iter().all(|&b| b == 0));
}

/// Number of reply kinds [`reply`] builds.
pub(super) const REPLY_KINDS: u8 = 9;

/// A sealed reply of kind `kind % REPLY_KINDS`, carrying `token`, `session_key`,
/// `operation` and `destination` where the kind has them.
pub(super) fn reply<'a>(
    kind: u8,
    token: &'a Token,
    session_key: &'a Secret<32>,
    operation: [u8; OPERATION_ID_LEN],
    destination: &'a str,
) -> Reply<'a> {
    match kind % REPLY_KINDS {
        0 => Reply::Granted { token, session_key, expires_at: NOW + 900 },
        1 => Reply::AuthFailed,
        2 => Reply::SecondFactorRequired {
            operation,
            channel: Channel::from_code(1 + kind % 4).unwrap_or(Channel::Email),
            destination,
        },
        3 => Reply::SecondFactorFailed { attempts_left: kind },
        4 => Reply::ClockSkew,
        5 => Reply::RateLimited { retry_after_secs: u32::from(kind) * 7 },
        6 => Reply::Malformed,
        7 => Reply::ScopeDenied,
        _ => Reply::ServerError,
    }
}

/// True when the client's `outcome` is exactly the server's `reply` sent at `NOW`.
pub(super) fn outcome_is(outcome: &Outcome, reply: &Reply<'_>) -> bool {
    match (outcome, *reply) {
        (Outcome::Granted(g), Reply::Granted { token, session_key, expires_at }) => {
            g.token == *token && g.session_key.ct_eq(session_key) && g.expires_at == expires_at && g.server_time == NOW
        }
        (
            Outcome::SecondFactorRequired { operation, channel, destination },
            Reply::SecondFactorRequired { operation: o, channel: c, destination: d },
        ) => *operation == o && *channel == c && destination == d,
        (Outcome::SecondFactorFailed { attempts_left }, Reply::SecondFactorFailed { attempts_left: a }) => {
            *attempts_left == a
        }
        (Outcome::ClockSkew { server_time }, Reply::ClockSkew) => *server_time == NOW,
        (Outcome::RateLimited { retry_after_secs }, Reply::RateLimited { retry_after_secs: r }) => {
            *retry_after_secs == r
        }
        (Outcome::AuthFailed, Reply::AuthFailed)
        | (Outcome::Malformed, Reply::Malformed)
        | (Outcome::ScopeDenied, Reply::ScopeDenied)
        | (Outcome::ServerError, Reply::ServerError) => true,
        _ => false,
    }
}

/// A token for `key_id` granting `scopes`, sealed by the fixed token verifier.
pub(super) fn grant_token(
    w: &World,
    key_id: KeyId,
    scopes: &str,
    second_factor: bool,
    seed: &[u8],
) -> (Token, Secret<32>) {
    let mut rng = FuzzRng::new(seed);
    let session_key = Secret::random(&mut rng);
    let mut token_id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rng, &mut token_id);
    let claims = Claims::new(token_id, key_id, NOW, NOW + 900, second_factor, AUDIENCE, scopes, session_key.clone())
        .expect("scopes were checked by the server");
    (w.tokens.seal(&claims, &mut rng).expect("audience matches"), session_key)
}

/// `request_mutate`: a genuine request from a real client, then mutations.
///
/// Layout: `api key id[16]`, `secret[24]`, `ephemeral[32]`, `nonce[16]`,
/// `timestamp u64`, `flags` (bit 0: map texts onto printable ASCII, bit 1: send a
/// second factor, bit 2: mutate the payload plaintext and reseal it under the real
/// `k2`, as a client holding the key could), `reply kind`, `audience`, `scopes`
/// (length-prefixed), `operation[16]`, `code` (length-prefixed), then mutations
/// (target ignored) of the request bytes, or of the payload plaintext (bit 2).
///
/// Property: the client builds the request iff audience, scopes and code obey §4.2,
/// and its payload is what §4.2 and §4.3 say; the server, holding this key,
/// authenticates byte-mutated requests iff unmutated, and resealed payloads iff they
/// obey §4.2's server validation (else `malformed` under the response key); when it
/// authenticates it reads exactly the payload's fields; the client reads exactly the
/// reply to its own request and nothing written for a changed one; and two answers
/// to one request (a replay) never share a keystream.
pub fn request_mutate(data: &[u8]) {
    let w = world();
    let backend = DefaultBackend::default();
    let mut input = Input::new(data);
    let id = KeyId::from_bytes(input.array());
    let key = ApiKey::from_parts(id, Secret::new(input.array()));
    let ephemeral = Secret::new(input.array::<32>());
    let nonce = input.array::<REQUEST_NONCE_LEN>();
    let timestamp = input.u64();
    let flags = input.byte();
    let reply_kind = input.byte();
    let sanitize = flags & 1 == 1;
    let audience = text(input.bytes(), sanitize, AUDIENCE_SLOT - 1);
    let scopes = text(input.bytes(), sanitize, SCOPES_SLOT - 1);
    let operation = input.array::<OPERATION_ID_LEN>();
    let mut code = text(input.bytes(), sanitize, MAX_CODE_LEN);
    if sanitize {
        code = code.replace(' ', "_");
        while code.len() < MIN_CODE_LEN {
            code.push('0');
        }
    }
    let second_factor = (flags & 2 == 2).then_some(SecondFactor { operation, code: &code });
    let code_ok =
        (MIN_CODE_LEN..=MAX_CODE_LEN).contains(&code.len()) && text_ok(&code, MAX_CODE_LEN) && !code.contains(' ');
    let valid = text_ok(&audience, AUDIENCE_SLOT - 1)
        && text_ok(&scopes, SCOPES_SLOT - 1)
        && (second_factor.is_none() || code_ok);

    let client = ClientHandshake::with_server_key(backend, &key, w.entry, w.identity).expect("valid server key");
    let req = ClientRequest { audience: &audience, scopes: &scopes, second_factor };
    let mut genuine = [0u8; REQUEST_LEN];
    let pending = match client.start_with_ephemeral(&req, timestamp, &ephemeral, &nonce, &mut genuine) {
        Ok(pending) => pending,
        Err(HandshakeError::InvalidRequest(why)) => {
            assert!(!valid, "client refused a valid request: {why}");
            return;
        }
        Err(e) => panic!("client: {e}"),
    };
    assert!(valid, "client built a request breaking the protocol's field rules");
    let sent = spec::Payload {
        timestamp,
        nonce,
        audience: &audience,
        scopes: &scopes,
        second_factor: second_factor.map(|s| (s.operation, s.code)),
    };
    let verifier = key.verifier(&backend).expect("X25519 accepts every 32-byte key");
    let mut request = genuine;
    let mut plain = [0u8; PAYLOAD_LEN];
    let resealed = flags & 4 == 4;
    let keys =
        resealed.then(|| spec::Keys::server_side(&w.server_static, &w.entry.public, verifier.as_bytes(), &genuine));
    if let Some(keys) = &keys {
        let k2 = backend.aead_key(&keys.k2);
        let (head, rest) = request.split_at_mut(OFF_SEALED_PAYLOAD);
        let (sealed, tag) = rest.split_at_mut(PAYLOAD_LEN);
        let tag: &mut [u8; TAG_LEN] = tag.try_into().expect("16-byte tag");
        plain.copy_from_slice(sealed);
        assert!(
            backend.open(&k2, &HANDSHAKE_NONCE, head, &mut plain, tag).is_ok(),
            "§4.3's k2 does not open the payload"
        );
        assert_eq!(spec::payload(&plain).as_ref(), Some(&sent), "the client's payload is not what §4.2 says");
        for m in Mutation::list(input.rest()) {
            m.apply(&mut plain);
        }
        sealed.copy_from_slice(&plain);
        backend.seal(&k2, &HANDSHAKE_NONCE, head, sealed, tag);
    } else {
        for m in Mutation::list(input.rest()) {
            m.apply(&mut request);
        }
    }
    let untouched = request == genuine;
    let expected = if resealed { spec::payload(&plain) } else { untouched.then_some(sent) };

    let mut out = [0u8; RESPONSE_LEN];
    let mut rng = FuzzRng::new(data);
    let opened = match w.responder.open_request(&request, NOW) {
        Ok(opened) => opened,
        Err(RequestError::UnknownServerKey) => {
            assert!(!untouched && !resealed, "genuine request: server key called unknown");
            w.responder.server_key_changed(&request, NOW, &mut out).expect("a key is current");
            check_key_changed(w, &request, &out);
            let read = pending.finish(&out);
            assert!(matches!(read, Err(HandshakeError::KeyChangedSignature)), "{read:?}");
            return;
        }
        Err(e) => {
            assert!(!untouched && !resealed, "genuine request refused: {e}");
            return;
        }
    };
    let ss = if opened.key_id() == Some(id) {
        w.responder.static_static(opened.server_key_id(), &verifier).expect("held key")
    } else {
        assert!(!resealed, "a genuine key id was misread");
        w.responder.dummy_static_static(opened.server_key_id(), opened.key_id().as_ref())
    };
    let auth = match (opened.authenticate(&ss), &expected) {
        (Ok(auth), Some(_)) => auth,
        (Ok(_), None) => panic!("a mutated request authenticated"),
        (Err(rejected), Some(_)) => panic!("a valid request was rejected: {:?}", rejected.reason()),
        (Err(rejected), None) => {
            if let Some(keys) = &keys {
                // §6.2 step 6: authenticated but malformed → `malformed` under response_key.
                assert!(matches!(rejected.reason(), RejectReason::PayloadMalformed(_)), "{:?}", rejected.reason());
                rejected.respond(NOW, &mut rng, &mut out);
                let body = open_response(&keys.response(&request), &out).expect("malformed under response_key");
                assert_eq!(body[0], Status::Malformed.code());
            } else {
                assert_eq!(rejected.status(), Status::AuthFailed, "{:?}", rejected.reason());
                rejected.respond(NOW, &mut rng, &mut out);
            }
            let read = pending.finish(&out);
            assert!(read.is_err(), "client read an answer to a changed request: {read:?}");
            return;
        }
    };
    let p = expected.unwrap_or_else(|| unreachable!("matched Some above"));
    assert_eq!(auth.key_id(), id);
    assert_eq!((auth.timestamp(), auth.nonce()), (p.timestamp, &p.nonce));
    assert_eq!((auth.audience(), auth.scopes()), (p.audience, p.scopes));
    assert_eq!(auth.second_factor(), p.second_factor);
    assert_eq!(auth.replay_id(), kdf::derive_public::<16>(kdf::LABEL_REPLAY_ID, &[id.as_bytes(), &p.nonce]));

    let (token, session_key) = grant_token(w, id, p.scopes, p.second_factor.is_some(), data);
    let reply = reply(reply_kind, &token, &session_key, operation, p.audience);
    auth.respond(&reply, NOW, &mut rng, &mut out);
    // The replayed copy authenticates again (replay state lives in the server crate)
    // and gets its own answer under the same response key.
    let mut again = [0u8; RESPONSE_LEN];
    let auth = w.responder.open_request(&request, NOW).map(|o| o.authenticate(&ss));
    let Ok(Ok(auth)) = auth else { panic!("a replayed copy did not authenticate") };
    auth.respond(&Reply::AuthFailed, NOW, &mut rng, &mut again);
    assert_no_shared_keystream(&out, &reply, &again, &Reply::AuthFailed);
    match (pending.finish(&out), untouched) {
        (Ok(outcome), true) => assert!(outcome_is(&outcome, &reply), "sent {reply:?}, read {outcome:?}"),
        (Err(e), true) => panic!("client could not read its own reply {reply:?}: {e}"),
        (read, false) => assert!(read.is_err(), "client read an answer to a changed request: {read:?}"),
    }
}

/// Opens a sealed response (§5.1) under `key`: the 370-byte body, or `None`.
pub(super) fn open_response(key: &Secret<32>, resp: &[u8; RESPONSE_LEN]) -> Option<[u8; RESPONSE_BODY_LEN]> {
    let b = DefaultBackend::default();
    let mut body = *field::<OFF_RESPONSE_BODY, RESPONSE_BODY_LEN, RESPONSE_LEN>(resp);
    let nonce = field::<OFF_RESPONSE_NONCE, RESPONSE_NONCE_LEN, RESPONSE_LEN>(resp);
    let tag = field::<OFF_RESPONSE_TAG, TAG_LEN, RESPONSE_LEN>(resp);
    b.open(&b.aead_key(key), nonce, &resp[..OFF_RESPONSE_BODY], &mut body, tag).ok().map(|()| body)
}

/// §4.3: two answers to one request must not share (key, nonce): XORing the sealed
/// bodies must not give the XOR of the plaintext bodies.
fn assert_no_shared_keystream(a: &[u8; RESPONSE_LEN], ra: &Reply<'_>, b: &[u8; RESPONSE_LEN], rb: &Reply<'_>) {
    let (mut pa, mut pb) = ([0u8; RESPONSE_BODY_LEN], [0u8; RESPONSE_BODY_LEN]);
    ra.encode(NOW, &mut pa);
    rb.encode(NOW, &mut pb);
    let shared = (0..RESPONSE_BODY_LEN).all(|i| a[OFF_RESPONSE_BODY + i] ^ b[OFF_RESPONSE_BODY + i] == pa[i] ^ pb[i]);
    assert!(!shared, "two answers to one request share a keystream");
}
