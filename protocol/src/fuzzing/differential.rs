//! Differential target: aws-lc-rs and the pure-Rust backend must agree on every
//! input, byte for byte (STYLE.md point 4).

use super::handshake::{reply, REPLY_KINDS};
use super::{text, Input, AUDIENCE, NOW};
use crate::api_key::{ApiKey, KeyId};
use crate::backend::{AwsLc, CryptoBackend, CryptoError, RustCrypto, TAG_LEN};
use crate::handshake::client::ClientHandshake;
use crate::handshake::server::Responder;
use crate::handshake::status::Status;
use crate::handshake::*;
use crate::secret::Secret;
use crate::server_key::{IdentityKey, ServerKeyDocument};
use crate::token::{Claims, TokenKeyring};

/// Longest AEAD message tried (onetrip's are at most 382 bytes).
const MAX_AEAD_LEN: usize = 1024;

fn agree(aws: Result<Secret<32>, CryptoError>, rust: Result<Secret<32>, CryptoError>, what: &str) {
    match (aws, rust) {
        (Ok(a), Ok(r)) => assert_eq!(a.expose(), r.expose(), "{what}: backends computed different bytes"),
        (Err(a), Err(r)) => assert_eq!(a, r, "{what}: backends refused differently"),
        (a, r) => panic!("{what}: aws-lc {a:?}, rustcrypto {r:?}"),
    }
}

/// `backend_differential`: both backends on the same input.
///
/// Layout: `op` (mod 4), then per op:
/// 0. X25519: `scalar[32]`, `point[32]`. Public keys equal; X25519(scalar, point)
///    equal or refused alike; X25519(a, B) = X25519(b, A) with `point` as a scalar.
/// 1. AEAD seal: `key[32]`, `nonce[12]`, `aad` (length-prefixed), the rest is the
///    plaintext. Equal ciphertext and tag; each opens the other's.
/// 2. AEAD open: `key[32]`, `nonce[12]`, `aad`, `tag[16]`, the rest is the
///    ciphertext. Both open to equal plaintext, or both refuse and zero the buffer.
/// 3. Handshake: every key and random value from the input (see [`Seeds`]). The
///    signed document, request, response and the client's reading are identical.
pub fn backend_differential(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 4 {
        0 => x25519(input),
        1 => seal(input),
        2 => open(input),
        _ => {
            let seeds = Seeds::read(input);
            let (aws, rust) = (transcript::<AwsLc>(&seeds), transcript::<RustCrypto>(&seeds));
            assert_eq!(aws.document, rust.document, "signed documents differ");
            assert_eq!(aws.request, rust.request, "requests differ");
            assert_eq!(aws.response, rust.response, "responses differ");
            assert_eq!(aws.status, rust.status, "clients read different statuses");
            let sent = if seeds.registered { reply_status(seeds.reply_kind) } else { Status::AuthFailed };
            assert_eq!(aws.status, sent);
        }
    }
}

fn x25519(mut input: Input<'_>) {
    let (a, b) = (Secret::new(input.array::<32>()), input.array::<32>());
    let (aws, rust) = (AwsLc, RustCrypto);
    let (Ok(ka), Ok(kr)) = (aws.static_key(&a), rust.static_key(&a)) else {
        panic!("a backend refused a 32-byte X25519 private key");
    };
    let public = aws.public_key(&ka);
    assert_eq!(public, rust.public_key(&kr), "public keys differ");
    agree(aws.x25519(&ka, &b), rust.x25519(&kr, &b), "X25519(scalar, point)");
    // The same bytes as a second private key: both sides of a DH agree.
    let b = Secret::new(b);
    let (Ok(kb_aws), Ok(kb_rust)) = (aws.static_key(&b), rust.static_key(&b)) else {
        panic!("a backend refused a 32-byte X25519 private key");
    };
    let b_public = rust.public_key(&kb_rust);
    agree(aws.x25519(&ka, &b_public), aws.x25519(&kb_aws, &public), "aws-lc DH symmetry");
    agree(rust.x25519(&kr, &b_public), aws.x25519(&kb_aws, &public), "rustcrypto DH symmetry");
}

fn seal(mut input: Input<'_>) {
    let key = Secret::new(input.array::<32>());
    let nonce = input.array();
    let aad = input.bytes();
    let plain = &input.rest()[..input.rest().len().min(MAX_AEAD_LEN)];
    let (aws, rust) = (AwsLc, RustCrypto);
    let (ka, kr) = (aws.aead_key(&key), rust.aead_key(&key));
    let (mut ca, mut cr) = (plain.to_vec(), plain.to_vec());
    let (mut ta, mut tr) = ([0u8; TAG_LEN], [0u8; TAG_LEN]);
    aws.seal(&ka, &nonce, aad, &mut ca, &mut ta);
    rust.seal(&kr, &nonce, aad, &mut cr, &mut tr);
    assert_eq!((&ca, ta), (&cr, tr), "ciphertexts differ");
    assert_eq!(aws.open(&ka, &nonce, aad, &mut cr, &tr), Ok(()), "aws-lc cannot open rustcrypto's seal");
    assert_eq!(rust.open(&kr, &nonce, aad, &mut ca, &ta), Ok(()), "rustcrypto cannot open aws-lc's seal");
    assert_eq!((&ca[..], &cr[..]), (plain, plain));
}

fn open(mut input: Input<'_>) {
    let key = Secret::new(input.array::<32>());
    let nonce = input.array();
    let aad = input.bytes();
    let tag = input.array();
    let sealed = &input.rest()[..input.rest().len().min(MAX_AEAD_LEN)];
    let (aws, rust) = (AwsLc, RustCrypto);
    let (mut a, mut r) = (sealed.to_vec(), sealed.to_vec());
    let ra = aws.open(&aws.aead_key(&key), &nonce, aad, &mut a, &tag);
    let rr = rust.open(&rust.aead_key(&key), &nonce, aad, &mut r, &tag);
    assert_eq!(ra, rr, "backends disagree on opening");
    assert_eq!(a, r, "backends opened to different bytes");
    if ra.is_err() {
        assert!(a.iter().all(|&b| b == 0), "a refused open left bytes behind");
    }
}

/// Every key and random value of one handshake, from the input in this order.
struct Seeds {
    identity: [u8; 32],
    server_private: [u8; 32],
    server_key_id: [u8; 8],
    dummy: [u8; 32],
    api_key_id: [u8; 16],
    api_secret: [u8; 24],
    ephemeral: [u8; 32],
    nonce: [u8; REQUEST_NONCE_LEN],
    token_master: [u8; 32],
    token_nonce: [u8; 12],
    session_key: [u8; 32],
    response_nonce: [u8; RESPONSE_NONCE_LEN],
    /// Flags bit 0: the server holds the API key (else it answers through the dummy).
    registered: bool,
    reply_kind: u8,
    /// Length-prefixed, mapped onto printable ASCII.
    audience: String,
    /// Length-prefixed, mapped onto printable ASCII.
    scopes: String,
}

impl Seeds {
    fn read(mut i: Input<'_>) -> Self {
        Self {
            identity: i.array(),
            server_private: i.array(),
            server_key_id: i.array(),
            dummy: i.array(),
            api_key_id: i.array(),
            api_secret: i.array(),
            ephemeral: i.array(),
            nonce: i.array(),
            token_master: i.array(),
            token_nonce: i.array(),
            session_key: i.array(),
            response_nonce: i.array(),
            registered: i.byte() & 1 == 1,
            reply_kind: i.byte(),
            audience: text(i.bytes(), true, AUDIENCE_SLOT - 1),
            scopes: text(i.bytes(), true, SCOPES_SLOT - 1),
        }
    }
}

fn reply_status(kind: u8) -> Status {
    let (token, session) = (crate::token::Token::from_array([1; crate::TOKEN_LEN]), Secret::new([0; 32]));
    let token = token.unwrap_or_else(|_| unreachable!("version byte is 1"));
    reply(kind, &token, &session, [0; OPERATION_ID_LEN], "").status()
}

struct Transcript {
    document: Vec<u8>,
    request: [u8; REQUEST_LEN],
    response: [u8; RESPONSE_LEN],
    status: Status,
}

fn transcript<B: CryptoBackend>(s: &Seeds) -> Transcript {
    let b = B::default();
    let mut responder =
        Responder::new(b.clone(), IdentityKey::from_seed(&Secret::new(s.identity)), Secret::new(s.dummy));
    responder
        .add_key(s.server_key_id, &Secret::new(s.server_private), NOW - 86_400, NOW + 86_400)
        .expect("one valid handshake key");
    let document =
        responder.signed_document(NOW, crate::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS).expect("a key is held");
    let doc = ServerKeyDocument::parse(&document).expect("a signed document parses");
    let key = ApiKey::from_parts(KeyId::from_bytes(s.api_key_id), Secret::new(s.api_secret));
    let client = ClientHandshake::new(b.clone(), &key, &doc, NOW).expect("the document's key is current");
    let req = ClientRequest { audience: &s.audience, scopes: &s.scopes, second_factor: None };
    let mut request = [0u8; REQUEST_LEN];
    let pending = client
        .start_with_ephemeral(&req, NOW, &Secret::new(s.ephemeral), &s.nonce, &mut request)
        .expect("sanitized fields fit");
    let opened = responder.open_request(&request, NOW).expect("a genuine request opens");
    let ss = if s.registered {
        let verifier = key.verifier(&b).expect("X25519 accepts every key");
        responder.static_static(&s.server_key_id, &verifier).expect("held key")
    } else {
        responder.dummy_static_static(&s.server_key_id, opened.key_id().as_ref())
    };
    let tokens = TokenKeyring::new(*b"diff", Secret::new(s.token_master)).for_audience(b, AUDIENCE).expect("fits");
    let session_key = Secret::new(s.session_key);
    let claims = Claims::new([9; 16], key.id(), NOW, NOW + 900, false, AUDIENCE, &s.scopes, session_key.clone())
        .expect("sanitized scopes fit");
    let token = tokens.seal_with_nonce(&claims, &s.token_nonce).expect("audience matches");
    let mut response = [0u8; RESPONSE_LEN];
    match opened.authenticate(&ss) {
        Ok(auth) => {
            let reply = reply(s.reply_kind % REPLY_KINDS, &token, &session_key, [3; 16], &s.audience);
            auth.respond_with_nonce(&reply, NOW, &s.response_nonce, &mut response);
        }
        Err(rejected) => {
            assert!(!s.registered, "a genuine request was rejected: {:?}", rejected.reason());
            rejected.respond_with_nonce(NOW, &s.response_nonce, &mut response);
        }
    }
    let outcome = pending.finish(&response).expect("the client reads the answer to its request");
    Transcript { document, request, response, status: outcome.status() }
}
