//! Tokens: fixed-size, opaque, sealed with ChaCha20-Poly1305 under a per-audience
//! key derived from a rotating master key (PROTOCOL.md §7). Verifying one is one
//! AEAD open: no I/O, no allocation.
//!
//! A resource server holds only its own audience key ([`TokenVerifier`]): it can
//! check tokens meant for it but cannot mint tokens for any other audience.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::api_key::{KeyId, KEY_ID_LEN};
use crate::backend::{CryptoBackend, DefaultBackend, NONCE_LEN, TAG_LEN};
use crate::codec::{field, field_mut, read_text, read_u64, write_text, write_u64};
use crate::handshake::{AUDIENCE_SLOT, SCOPES_SLOT};
use crate::kdf;
use crate::pop::{PopError, PopProof};
use crate::secret::Secret;

/// Total token length.
pub const TOKEN_LEN: usize = 320;
/// Length of a token key id.
pub const TOKEN_KEY_ID_LEN: usize = 4;
/// Length of the audience tag in the clear header.
pub const AUDIENCE_TAG_LEN: usize = 8;
/// Length of a token id.
pub const TOKEN_ID_LEN: usize = 16;
/// Characters of a token in base64url (the `Authorization: Onetrip …` value).
pub const TOKEN_BASE64_LEN: usize = (TOKEN_LEN * 4).div_ceil(3);
/// Length of a token's clear header, which proofs of possession are bound to.
pub const TOKEN_BINDING_LEN: usize = T_OFF_BODY;
/// Clock slack when checking `issued_at` against the verifier's clock.
pub const ISSUED_AT_SLACK_SECS: u64 = 60;

const T_OFF_VERSION: usize = 0;
const T_OFF_KEY_ID: usize = 1;
const T_OFF_AUDIENCE_TAG: usize = T_OFF_KEY_ID + TOKEN_KEY_ID_LEN;
const T_OFF_NONCE: usize = T_OFF_AUDIENCE_TAG + AUDIENCE_TAG_LEN;
const T_OFF_BODY: usize = T_OFF_NONCE + NONCE_LEN;
const T_OFF_TAG: usize = TOKEN_LEN - TAG_LEN;
/// Length of the sealed claims.
pub const TOKEN_BODY_LEN: usize = T_OFF_TAG - T_OFF_BODY;
const TB_OFF_TOKEN_ID: usize = 0;
const TB_OFF_API_KEY_ID: usize = TB_OFF_TOKEN_ID + TOKEN_ID_LEN;
const TB_OFF_ISSUED_AT: usize = TB_OFF_API_KEY_ID + KEY_ID_LEN;
const TB_OFF_EXPIRES_AT: usize = TB_OFF_ISSUED_AT + 8;
const TB_OFF_FLAGS: usize = TB_OFF_EXPIRES_AT + 8;
const TB_OFF_AUDIENCE: usize = TB_OFF_FLAGS + 1;
const TB_OFF_SCOPES: usize = TB_OFF_AUDIENCE + AUDIENCE_SLOT;
const TB_OFF_SESSION_KEY: usize = TB_OFF_SCOPES + SCOPES_SLOT;
const TB_OFF_RESERVED: usize = TB_OFF_SESSION_KEY + 32;
const _: () = assert!(T_OFF_BODY == 25 && TB_OFF_RESERVED == 275 && TB_OFF_RESERVED <= TOKEN_BODY_LEN);
/// The reserved audience of the authentication server's own API (`/v1/whoami`,
/// `/v1/introspect`, `/v1/otp/*`). Its token key comes from its own label
/// ([`TokenKeyring::for_audience`] picks it), so no resource server's audience key
/// opens, reads or mints tokens for it (PROTOCOL.md §7).
pub const SERVER_AUDIENCE: &str = "onetrip";
/// Claims flag: a second factor was verified for this token.
pub const TOKEN_FLAG_SECOND_FACTOR: u8 = 0x01;

/// Why a token was refused (or could not be minted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not exactly [`TOKEN_LEN`] bytes / [`TOKEN_BASE64_LEN`] characters.
    #[error("token has the wrong length")]
    Length,
    /// Not base64url.
    #[error("token is not base64url")]
    Encoding,
    /// Unknown version byte.
    #[error("unsupported token version {0}")]
    Version(u8),
    /// Sealed under a token key this verifier does not hold (rotated out, or another
    /// deployment).
    #[error("token was sealed with an unknown token key: refresh the token")]
    UnknownKey,
    /// Meant for a different audience.
    #[error("token is for a different audience")]
    WrongAudience,
    /// AEAD open failed: forged or altered.
    #[error("token is invalid (altered or forged)")]
    Invalid,
    /// Opened, but the claims break a layout rule.
    #[error("token claims are malformed")]
    Malformed,
    /// Past its expiry.
    #[error("token expired at {expires_at}: get a new one")]
    Expired {
        /// Expiry, unix seconds.
        expires_at: u64,
    },
    /// Issued in the future by more than the slack: clocks disagree.
    #[error("token issued at {issued_at}, in the future: check clocks")]
    NotYetValid {
        /// Issue time.
        issued_at: u64,
    },
    /// Audience or scopes too long, or bad characters, when minting.
    #[error("cannot mint token: {0}")]
    ClaimsTooLong(&'static str),
    /// The proof of possession failed.
    #[error(transparent)]
    Pop(#[from] PopError),
    /// The keyring holds no key.
    #[error("no token key configured")]
    NoKey,
    /// The server's own audience: its key is never exported to a resource server.
    #[error("`onetrip` is the authentication server's own audience: its token key is never exported")]
    ReservedAudience,
}

/// A sealed token. Opaque to clients; `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_LEN]);

impl core::fmt::Debug for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl Token {
    /// Wraps bytes after checking the version.
    ///
    /// # Errors
    /// [`TokenError::Version`].
    pub fn from_array(bytes: [u8; TOKEN_LEN]) -> Result<Self, TokenError> {
        if bytes[T_OFF_VERSION] != crate::VERSION {
            return Err(TokenError::Version(bytes[T_OFF_VERSION]));
        }
        Ok(Self(bytes))
    }
    /// From a slice of exactly [`TOKEN_LEN`] bytes.
    ///
    /// # Errors
    /// [`TokenError::Length`] or [`TokenError::Version`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TokenError> {
        Self::from_array(bytes.try_into().map_err(|_| TokenError::Length)?)
    }
    /// From the base64url form.
    ///
    /// # Errors
    /// [`TokenError::Length`], [`TokenError::Encoding`] or [`TokenError::Version`].
    pub fn from_base64(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.len() != TOKEN_BASE64_LEN {
            return Err(TokenError::Length);
        }
        let mut raw = [0u8; TOKEN_LEN + 2];
        let n = URL_SAFE_NO_PAD.decode_slice(s, &mut raw).map_err(|_| TokenError::Encoding)?;
        Self::from_slice(&raw[..n])
    }
    /// The base64url form for `Authorization: Onetrip <token>`.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(URL_SAFE_NO_PAD.encode(self.0))
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }
    /// The clear header (version, key id, audience tag, random nonce): unique per
    /// token, and what a proof of possession is bound to.
    pub fn binding(&self) -> &[u8; TOKEN_BINDING_LEN] {
        field::<0, TOKEN_BINDING_LEN, TOKEN_LEN>(&self.0)
    }
    /// The token key id in the clear header.
    pub fn key_id(&self) -> [u8; TOKEN_KEY_ID_LEN] {
        *field::<T_OFF_KEY_ID, TOKEN_KEY_ID_LEN, TOKEN_LEN>(&self.0)
    }
    /// The audience tag in the clear header.
    pub fn audience_tag(&self) -> [u8; AUDIENCE_TAG_LEN] {
        *field::<T_OFF_AUDIENCE_TAG, AUDIENCE_TAG_LEN, TOKEN_LEN>(&self.0)
    }
}

/// What a token says. Fixed-size fields; `Debug` redacts the session key.
#[derive(Clone)]
pub struct Claims {
    /// Unique token id (for revocation and PoP binding).
    pub token_id: [u8; TOKEN_ID_LEN],
    /// API key the token was issued to.
    pub api_key_id: KeyId,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// A second factor was verified.
    pub second_factor: bool,
    audience: [u8; AUDIENCE_SLOT],
    scopes: [u8; SCOPES_SLOT],
    session_key: Secret<32>,
}

impl core::fmt::Debug for Claims {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Claims")
            .field("token_id", &self.token_id)
            .field("api_key_id", &self.api_key_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("second_factor", &self.second_factor)
            .field("audience", &self.audience())
            .field("scopes", &self.scopes())
            .field("session_key", &self.session_key)
            .finish()
    }
}

impl Claims {
    /// Builds claims for minting.
    ///
    /// # Errors
    /// [`TokenError::ClaimsTooLong`] when audience (64) or scopes (128) do not fit
    /// or hold non-printable bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        token_id: [u8; TOKEN_ID_LEN],
        api_key_id: KeyId,
        issued_at: u64,
        expires_at: u64,
        second_factor: bool,
        audience: &str,
        scopes: &str,
        session_key: Secret<32>,
    ) -> Result<Self, TokenError> {
        let mut a = [0u8; AUDIENCE_SLOT];
        write_text(&mut a, audience)
            .map_err(|_| TokenError::ClaimsTooLong("audience: at most 64 printable ASCII bytes"))?;
        let mut s = [0u8; SCOPES_SLOT];
        write_text(&mut s, scopes)
            .map_err(|_| TokenError::ClaimsTooLong("scopes: at most 128 printable ASCII bytes"))?;
        Ok(Self { token_id, api_key_id, issued_at, expires_at, second_factor, audience: a, scopes: s, session_key })
    }
    /// The audience.
    pub fn audience(&self) -> &str {
        read_text(&self.audience).unwrap_or_default()
    }
    /// The granted scopes, space separated.
    pub fn scopes(&self) -> &str {
        read_text(&self.scopes).unwrap_or_default()
    }
    /// True when `scope` is one of the granted scopes.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().split(' ').any(|s| !s.is_empty() && s == scope)
    }
    /// The session key (for PoP verification).
    pub fn session_key(&self) -> &Secret<32> {
        &self.session_key
    }

    fn encode(&self, body: &mut [u8; TOKEN_BODY_LEN]) {
        body.fill(0);
        *field_mut::<TB_OFF_TOKEN_ID, TOKEN_ID_LEN, TOKEN_BODY_LEN>(body) = self.token_id;
        *field_mut::<TB_OFF_API_KEY_ID, KEY_ID_LEN, TOKEN_BODY_LEN>(body) = *self.api_key_id.as_bytes();
        write_u64::<TB_OFF_ISSUED_AT, TOKEN_BODY_LEN>(body, self.issued_at);
        write_u64::<TB_OFF_EXPIRES_AT, TOKEN_BODY_LEN>(body, self.expires_at);
        body[TB_OFF_FLAGS] = if self.second_factor { TOKEN_FLAG_SECOND_FACTOR } else { 0 };
        *field_mut::<TB_OFF_AUDIENCE, AUDIENCE_SLOT, TOKEN_BODY_LEN>(body) = self.audience;
        *field_mut::<TB_OFF_SCOPES, SCOPES_SLOT, TOKEN_BODY_LEN>(body) = self.scopes;
        *field_mut::<TB_OFF_SESSION_KEY, 32, TOKEN_BODY_LEN>(body) = *self.session_key.expose();
    }

    fn decode(body: &[u8; TOKEN_BODY_LEN]) -> Result<Self, TokenError> {
        let flags = body[TB_OFF_FLAGS];
        if flags & !TOKEN_FLAG_SECOND_FACTOR != 0 || body[TB_OFF_RESERVED..].iter().any(|&b| b != 0) {
            return Err(TokenError::Malformed);
        }
        let audience = *field::<TB_OFF_AUDIENCE, AUDIENCE_SLOT, TOKEN_BODY_LEN>(body);
        let scopes = *field::<TB_OFF_SCOPES, SCOPES_SLOT, TOKEN_BODY_LEN>(body);
        read_text(&audience).map_err(|_| TokenError::Malformed)?;
        read_text(&scopes).map_err(|_| TokenError::Malformed)?;
        Ok(Self {
            token_id: *field::<TB_OFF_TOKEN_ID, TOKEN_ID_LEN, TOKEN_BODY_LEN>(body),
            api_key_id: KeyId::from_bytes(*field::<TB_OFF_API_KEY_ID, KEY_ID_LEN, TOKEN_BODY_LEN>(body)),
            issued_at: read_u64::<TB_OFF_ISSUED_AT, TOKEN_BODY_LEN>(body),
            expires_at: read_u64::<TB_OFF_EXPIRES_AT, TOKEN_BODY_LEN>(body),
            second_factor: flags & TOKEN_FLAG_SECOND_FACTOR != 0,
            audience,
            scopes,
            session_key: Secret::new(*field::<TB_OFF_SESSION_KEY, 32, TOKEN_BODY_LEN>(body)),
        })
    }
}

/// The audience tag: `BLAKE3-derive_key("onetrip v1 audience tag", audience)[..8]`.
pub fn audience_tag(audience: &str) -> [u8; AUDIENCE_TAG_LEN] {
    kdf::derive_public(kdf::LABEL_AUDIENCE_TAG, &[audience.as_bytes()])
}

/// The server's master token keys: the first seals, all open. Rotate by putting a
/// new key first and keeping the old one until its tokens have expired.
#[derive(Clone)]
pub struct TokenKeyring {
    keys: Vec<([u8; TOKEN_KEY_ID_LEN], Secret<32>)>,
}

impl core::fmt::Debug for TokenKeyring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TokenKeyring").field("key_ids", &self.keys.iter().map(|k| k.0).collect::<Vec<_>>()).finish()
    }
}

impl TokenKeyring {
    /// A keyring whose current (sealing) key is `(id, master)`.
    pub fn new(id: [u8; TOKEN_KEY_ID_LEN], master: Secret<32>) -> Self {
        Self { keys: vec![(id, master)] }
    }
    /// Adds an older key that still opens tokens.
    pub fn push_previous(&mut self, id: [u8; TOKEN_KEY_ID_LEN], master: Secret<32>) {
        self.keys.push((id, master));
    }
    /// The audience key for `audience` under every master key, current first.
    /// Give these to a resource server for its [`TokenVerifier`].
    ///
    /// # Errors
    /// [`TokenError::ReservedAudience`] for [`SERVER_AUDIENCE`]: the server's own
    /// token key never leaves it.
    pub fn audience_secrets(&self, audience: &str) -> Result<Vec<([u8; TOKEN_KEY_ID_LEN], Secret<32>)>, TokenError> {
        if audience == SERVER_AUDIENCE {
            return Err(TokenError::ReservedAudience);
        }
        Ok(self
            .keys
            .iter()
            .map(|(id, master)| {
                (*id, kdf::derive(kdf::LABEL_TOKEN_AUDIENCE_KEY, &[master.expose(), id, audience.as_bytes()]))
            })
            .collect())
    }
    /// A prepared verifier/sealer for one audience; for [`SERVER_AUDIENCE`], the
    /// server's own key (`KDF("onetrip v1 token server key", master ‖ key id)`).
    ///
    /// # Errors
    /// [`TokenError::ClaimsTooLong`] for an audience over 64 bytes.
    pub fn for_audience<B: CryptoBackend>(&self, backend: B, audience: &str) -> Result<TokenVerifier<B>, TokenError> {
        if audience == SERVER_AUDIENCE {
            let keys: Vec<_> = self
                .keys
                .iter()
                .map(|(id, master)| (*id, kdf::derive(kdf::LABEL_TOKEN_SERVER_KEY, &[master.expose(), id])))
                .collect();
            return TokenVerifier::new(backend, audience, &keys);
        }
        TokenVerifier::new(backend, audience, &self.audience_secrets(audience)?)
    }
}

/// Checks (and, holding the secret, seals) tokens for one audience. Cheap to share;
/// keys are prepared once.
pub struct TokenVerifier<B: CryptoBackend = DefaultBackend> {
    backend: B,
    audience: [u8; AUDIENCE_SLOT],
    tag: [u8; AUDIENCE_TAG_LEN],
    keys: Vec<([u8; TOKEN_KEY_ID_LEN], B::AeadKey)>,
}

impl<B: CryptoBackend> core::fmt::Debug for TokenVerifier<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("audience", &read_text(&self.audience).unwrap_or_default())
            .field("key_ids", &self.keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .finish()
    }
}

impl<B: CryptoBackend> TokenVerifier<B> {
    /// A verifier for `audience` holding its audience keys (current first), as
    /// exported by [`TokenKeyring::audience_secrets`].
    ///
    /// # Errors
    /// [`TokenError::ClaimsTooLong`] for an audience over 64 bytes;
    /// [`TokenError::NoKey`] for an empty key list.
    pub fn new(backend: B, audience: &str, keys: &[([u8; TOKEN_KEY_ID_LEN], Secret<32>)]) -> Result<Self, TokenError> {
        if keys.is_empty() {
            return Err(TokenError::NoKey);
        }
        let mut slot = [0u8; AUDIENCE_SLOT];
        write_text(&mut slot, audience)
            .map_err(|_| TokenError::ClaimsTooLong("audience: at most 64 printable ASCII bytes"))?;
        let keys = keys.iter().map(|(id, k)| (*id, backend.aead_key(k))).collect();
        Ok(Self { backend, audience: slot, tag: audience_tag(audience), keys })
    }

    /// The audience this verifier is for.
    pub fn audience(&self) -> &str {
        read_text(&self.audience).unwrap_or_default()
    }

    /// Seals `claims` (their audience must be this verifier's) with the current key.
    ///
    /// # Errors
    /// [`TokenError::WrongAudience`].
    pub fn seal(&self, claims: &Claims, rng: &mut impl CryptoRngCore) -> Result<Token, TokenError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_with_nonce(claims, &nonce)
    }

    /// [`Self::seal`] with a caller-chosen nonce: for test vectors only (a repeated
    /// nonce under one key breaks ChaCha20-Poly1305).
    ///
    /// # Errors
    /// [`TokenError::WrongAudience`].
    pub fn seal_with_nonce(&self, claims: &Claims, nonce: &[u8; NONCE_LEN]) -> Result<Token, TokenError> {
        if claims.audience != self.audience {
            return Err(TokenError::WrongAudience);
        }
        let (key_id, key) = self.keys.first().ok_or(TokenError::NoKey)?;
        let mut t = [0u8; TOKEN_LEN];
        t[T_OFF_VERSION] = crate::VERSION;
        *field_mut::<T_OFF_KEY_ID, TOKEN_KEY_ID_LEN, TOKEN_LEN>(&mut t) = *key_id;
        *field_mut::<T_OFF_AUDIENCE_TAG, AUDIENCE_TAG_LEN, TOKEN_LEN>(&mut t) = self.tag;
        *field_mut::<T_OFF_NONCE, NONCE_LEN, TOKEN_LEN>(&mut t) = *nonce;
        let mut body = Zeroizing::new([0u8; TOKEN_BODY_LEN]);
        claims.encode(&mut body);
        let mut tag = [0u8; TAG_LEN];
        self.backend.seal(key, nonce, &t[..T_OFF_BODY], &mut body[..], &mut tag);
        *field_mut::<T_OFF_BODY, TOKEN_BODY_LEN, TOKEN_LEN>(&mut t) = *body;
        *field_mut::<T_OFF_TAG, TAG_LEN, TOKEN_LEN>(&mut t) = tag;
        Ok(Token(t))
    }

    /// Opens and checks a token at `now`: one AEAD open, no allocation.
    ///
    /// # Errors
    /// A [`TokenError`] naming the first check that failed.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Claims, TokenError> {
        let t: &[u8; TOKEN_LEN] = token.try_into().map_err(|_| TokenError::Length)?;
        if t[T_OFF_VERSION] != crate::VERSION {
            return Err(TokenError::Version(t[T_OFF_VERSION]));
        }
        let key_id = field::<T_OFF_KEY_ID, TOKEN_KEY_ID_LEN, TOKEN_LEN>(t);
        let (_, key) = self.keys.iter().find(|(id, _)| id == key_id).ok_or(TokenError::UnknownKey)?;
        if field::<T_OFF_AUDIENCE_TAG, AUDIENCE_TAG_LEN, TOKEN_LEN>(t) != &self.tag {
            return Err(TokenError::WrongAudience);
        }
        let mut body = Zeroizing::new(*field::<T_OFF_BODY, TOKEN_BODY_LEN, TOKEN_LEN>(t));
        self.backend
            .open(
                key,
                field::<T_OFF_NONCE, NONCE_LEN, TOKEN_LEN>(t),
                &t[..T_OFF_BODY],
                &mut body[..],
                field::<T_OFF_TAG, TAG_LEN, TOKEN_LEN>(t),
            )
            .map_err(|_| TokenError::Invalid)?;
        let claims = Claims::decode(&body)?;
        if claims.audience != self.audience {
            return Err(TokenError::WrongAudience);
        }
        if now > claims.expires_at {
            return Err(TokenError::Expired { expires_at: claims.expires_at });
        }
        if claims.issued_at > now.saturating_add(ISSUED_AT_SLACK_SECS) {
            return Err(TokenError::NotYetValid { issued_at: claims.issued_at });
        }
        Ok(claims)
    }

    /// Verifies a token and the request's proof of possession in one call.
    ///
    /// # Errors
    /// A [`TokenError`], with [`TokenError::Pop`] for a bad or stale proof.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_request(
        &self,
        token: &[u8],
        proof: &PopProof,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
        window: u64,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify(token, now)?;
        let binding = token.first_chunk::<TOKEN_BINDING_LEN>().ok_or(TokenError::Length)?;
        proof.verify(claims.session_key(), binding, method, path, body, now, window)?;
        Ok(claims)
    }
}
