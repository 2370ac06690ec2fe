//! Token target: `TokenVerifier::verify` and `verify_request` with proofs of
//! possession, on arbitrary bytes and on mutated genuine tokens and proofs.

use std::sync::OnceLock;

use super::{spec, text, text_ok, utf8_prefix, FuzzRng, Input, Mutation, AUDIENCE, NOW};
use crate::api_key::KeyId;
use crate::backend::{CryptoBackend, DefaultBackend, TAG_LEN};
use crate::pop::{PopError, PopProof};
use crate::secret::Secret;
use crate::token::{
    audience_tag, Claims, Token, TokenError, TokenKeyring, TokenVerifier, ISSUED_AT_SLACK_SECS, TOKEN_BINDING_LEN,
    TOKEN_BODY_LEN, TOKEN_LEN,
};

const OLD_KEY_ID: [u8; 4] = *b"old0";
const OLD_MASTER: &str = "token master previous";
const CURRENT_MASTER: &str = "token master current";

/// The verifier under test (current key with the vectors' token key id but a
/// fuzz-only master, plus a previous key), a sealer holding only the previous key,
/// and the same keyring's verifier for another audience.
struct Verifiers {
    current: TokenVerifier,
    old: TokenVerifier,
    other: TokenVerifier,
    current_id: [u8; 4],
}

fn verifiers() -> &'static Verifiers {
    static VERIFIERS: OnceLock<Verifiers> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let b = DefaultBackend::default();
        let current_id = super::vector_input("token key id");
        let old_master = Secret::new(super::fuzz_input::<32>(OLD_MASTER));
        let mut keyring = TokenKeyring::new(current_id, Secret::new(super::fuzz_input(CURRENT_MASTER)));
        keyring.push_previous(OLD_KEY_ID, old_master.clone());
        let expect = "fixed audiences fit";
        Verifiers {
            current: keyring.for_audience(b, AUDIENCE).expect(expect),
            old: TokenKeyring::new(OLD_KEY_ID, old_master).for_audience(b, AUDIENCE).expect(expect),
            other: keyring.for_audience(b, "other.example").expect(expect),
            current_id,
        }
    })
}

/// What `verify` must answer for bytes no sealer produced: the first failing
/// cheap check, else `Invalid` (the AEAD cannot open).
fn expected_refusal(v: &Verifiers, t: &[u8]) -> TokenError {
    if t.len() != TOKEN_LEN {
        TokenError::Length
    } else if t[0] != crate::VERSION {
        TokenError::Version(t[0])
    } else if t[1..5] != v.current_id && t[1..5] != OLD_KEY_ID {
        TokenError::UnknownKey
    } else if t[5..13] != audience_tag(AUDIENCE) {
        TokenError::WrongAudience
    } else {
        TokenError::Invalid
    }
}

/// Applies `m` to a string's bytes, keeping the change only if it stays UTF-8.
fn mutate_str(s: &mut String, m: &Mutation) {
    let mut b = s.clone().into_bytes();
    m.apply(&mut b);
    if let Ok(t) = String::from_utf8(b) {
        *s = t;
    }
}

/// `token_verify`: tokens and proofs of possession.
///
/// Layout: `mode`. Even: `now u64`, `window`, `method`, `path`, `body`, `PoP header`
/// (length-prefixed), the rest is the token. Odd: `token id[16]`, `api key id[16]`,
/// `session key[32]`, `token nonce[12]`, `pop rng seed[16]`, then u16 offsets from
/// `NOW` for `issued_at`, `lifetime` (from `issued_at`), `now`, `pop timestamp`,
/// `window`, `flags` (bit 0: second factor, bit 1: seal with the previous key, bit 2:
/// map scopes onto printable ASCII, bit 3: token mutations change the claims
/// plaintext, resealed under the real audience key), `scopes`, `method`, `path`,
/// `body` (length-prefixed), then mutations whose target (mod 5) is the token, the
/// PoP header, the method, the path or the body.
///
/// Property: bytes no sealer produced never verify, with the first failing check as
/// the error; a sealed token verifies iff unmutated and within its time, yielding
/// exactly the sealed claims, never for another audience; resealed claims verify
/// iff §7's steps 5–8 accept them, with exactly their fields; `verify_request`
/// passes iff the token verifies, the proof, method, path and body are unchanged,
/// the session key is the one signed with, and the proof is fresh; header and
/// base64 forms parse iff canonical.
pub fn token_verify(data: &[u8]) {
    let v = verifiers();
    let mut input = Input::new(data);
    if input.byte() & 1 == 0 {
        let now = input.u64();
        let window = u64::from(input.byte());
        let method = String::from_utf8_lossy(input.bytes()).into_owned();
        let path = String::from_utf8_lossy(input.bytes()).into_owned();
        let body = input.bytes();
        let header = utf8_prefix(input.bytes());
        let token = input.rest();
        assert_eq!(v.current.verify(token, now).err(), Some(expected_refusal(v, token)));
        if let Ok(proof) = PopProof::from_header(header) {
            assert_eq!(proof.to_header(), header.trim(), "a non-canonical PoP header was accepted");
            assert_eq!(PopProof::from_bytes(proof.as_bytes()), Ok(proof));
            let r = v.current.verify_request(token, &proof, &method, &path, body, now, window);
            assert!(r.is_err(), "arbitrary bytes passed verify_request");
        }
        if let Ok(t) = Token::from_slice(token) {
            assert_eq!(Token::from_base64(&t.to_base64()), Ok(t));
        }
        let s = utf8_prefix(token);
        if let Ok(t) = Token::from_base64(s) {
            assert_eq!(t.to_base64().as_str(), s.trim(), "a non-canonical token string was accepted");
        }
        return;
    }

    let token_id = input.array();
    let api_key_id = KeyId::from_bytes(input.array());
    let session_key = Secret::new(input.array::<32>());
    let nonce = input.array();
    let pop_seed = input.array::<16>();
    let issued_at = NOW + u64::from(input.u16());
    let expires_at = issued_at + u64::from(input.u16());
    let now = NOW + u64::from(input.u16());
    let pop_time = NOW + u64::from(input.u16());
    let window = u64::from(input.byte());
    let flags = input.byte();
    let scopes = text(input.bytes(), flags & 4 == 4, 128);
    let sf = flags & 1 == 1;
    let claims = match Claims::new(token_id, api_key_id, issued_at, expires_at, sf, AUDIENCE, &scopes, session_key) {
        Ok(c) => c,
        Err(e) => {
            assert!(!text_ok(&scopes, 128), "valid scopes refused: {e}");
            assert!(matches!(e, TokenError::ClaimsTooLong(_)));
            return;
        }
    };
    assert!(text_ok(&scopes, 128), "invalid scopes accepted");
    let (sealer, key_id, master) = if flags & 2 == 2 {
        (&v.old, OLD_KEY_ID, super::fuzz_input::<32>(OLD_MASTER))
    } else {
        (&v.current, v.current_id, super::fuzz_input::<32>(CURRENT_MASTER))
    };
    let token = sealer.seal_with_nonce(&claims, &nonce).expect("audience matches");
    assert_eq!(Token::from_base64(&token.to_base64()).as_ref(), Ok(&token));
    let mut method = String::from_utf8_lossy(input.bytes()).into_owned();
    let mut path = String::from_utf8_lossy(input.bytes()).into_owned();
    let mut body = input.bytes().to_vec();
    let mut rng = FuzzRng::new(&pop_seed);
    let proof = PopProof::sign(claims.session_key(), token.binding(), &method, &path, &body, pop_time, &mut rng)
        .expect("method and path under 256 bytes");
    let (method0, path0, body0, header0) = (method.clone(), path.clone(), body.clone(), proof.to_header());

    // Bit 3: token mutations change the claims plaintext, resealed under §7's K_aud
    // (what a holder of the audience key could mint); else the token bytes.
    let resealed = flags & 8 == 8;
    let b = DefaultBackend::default();
    let k_aud = b.aead_key(&spec::audience_key(&master, &key_id, AUDIENCE));
    let mut bytes = *token.as_bytes();
    let mut plain = [0u8; TOKEN_BODY_LEN];
    if resealed {
        let (head, rest) = bytes.split_at(TOKEN_BINDING_LEN);
        let (sealed, tag) = rest.split_at(TOKEN_BODY_LEN);
        plain.copy_from_slice(sealed);
        let tag: &[u8; TAG_LEN] = tag.try_into().expect("16-byte tag");
        assert!(b.open(&k_aud, &nonce, head, &mut plain, tag).is_ok(), "§7's K_aud does not open the token");
        assert_eq!(spec::claims(&plain), Some(as_spec(&claims)), "the sealed claims are not what §7 says");
    }
    let mut header = header0.clone();
    for m in Mutation::list(input.rest()) {
        match m.target % 5 {
            0 if resealed => m.apply(&mut plain),
            0 => m.apply(&mut bytes),
            1 => mutate_str(&mut header, &m),
            2 => mutate_str(&mut method, &m),
            3 => mutate_str(&mut path, &m),
            _ => m.apply(&mut body),
        }
    }
    if resealed {
        let (head, rest) = bytes.split_at_mut(TOKEN_BINDING_LEN);
        let (sealed, tag) = rest.split_at_mut(TOKEN_BODY_LEN);
        sealed.copy_from_slice(&plain);
        let tag: &mut [u8; TAG_LEN] = tag.try_into().expect("16-byte tag");
        b.seal(&k_aud, &nonce, head, sealed, tag);
    }

    // §7 verification steps 5–8 on what was sealed; `None`: any refusal is right.
    let time = |c: &spec::Claims<'_>| {
        if now > c.expires_at {
            Err(TokenError::Expired { expires_at: c.expires_at })
        } else if c.issued_at > now + ISSUED_AT_SLACK_SECS {
            Err(TokenError::NotYetValid { issued_at: c.issued_at })
        } else {
            Ok(())
        }
    };
    let expected = if resealed {
        Some(match spec::claims(&plain) {
            None => Err(TokenError::Malformed),
            Some(c) if c.audience != AUDIENCE => Err(TokenError::WrongAudience),
            Some(c) => time(&c).map(|()| c),
        })
    } else if bytes == *token.as_bytes() {
        let c = as_spec(&claims);
        Some(time(&c).map(|()| c))
    } else {
        None
    };
    let verified = v.current.verify(&bytes, now);
    match (&expected, &verified) {
        (None, r) => assert!(r.is_err(), "a mutated token verified"),
        (Some(Ok(want)), Ok(got)) => assert_eq!(&as_spec(got), want, "claims changed in transit"),
        (Some(Err(want)), Err(got)) => assert_eq!(got, want),
        (want, got) => panic!("verify: expected {want:?}, got {got:?}"),
    }
    assert!(v.other.verify(&bytes, now).is_err(), "a token verified for another audience");

    let Ok(parsed) = PopProof::from_header(&header) else {
        assert_ne!(header, header0, "a genuine PoP header did not parse");
        return;
    };
    assert_eq!(parsed == proof, header == header0, "PoP header {header:?} parsed as the genuine proof");
    let request_untouched = parsed == proof && (method == method0 && path == path0 && body == body0);
    let result = v.current.verify_request(&bytes, &parsed, &method, &path, &body, now, window);
    let expected = expected.map(|e| match e {
        Err(e) => Err(e),
        Ok(c) if !request_untouched || c.session_key != *claims.session_key().expose() => {
            Err(TokenError::Pop(PopError::BadSignature))
        }
        Ok(_) if pop_time.abs_diff(now) > window => Err(TokenError::Pop(PopError::Stale { timestamp: pop_time, now })),
        Ok(c) => Ok(c),
    });
    match (&expected, &result) {
        (None, r) => assert!(r.is_err(), "verify_request passed a mutated token"),
        (Some(Ok(want)), Ok(got)) => assert_eq!(&as_spec(got), want),
        (Some(Err(want)), Err(got)) => assert_eq!(got, want),
        (want, got) => panic!("verify_request: expected {want:?}, got {got:?}"),
    }
}

/// The claims as §7 lays them out.
fn as_spec(c: &Claims) -> spec::Claims<'_> {
    spec::Claims {
        token_id: c.token_id,
        api_key_id: *c.api_key_id.as_bytes(),
        issued_at: c.issued_at,
        expires_at: c.expires_at,
        second_factor: c.second_factor,
        audience: c.audience(),
        scopes: c.scopes(),
        session_key: *c.session_key().expose(),
    }
}
