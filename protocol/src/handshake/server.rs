//! Server side of the handshake (PROTOCOL.md §6.2).
//!
//! [`Responder::open_request`] does the one X25519 of the hot path and reads the
//! (encrypted) API key id; the caller looks the id up and passes the cached
//! [`StaticStatic`] (or a dummy for unknown and revoked keys, which costs the same)
//! to [`OpenedRequest::authenticate`]. Every path ends in exactly one fixed-size
//! response written by `respond`.

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

pub use super::body::Reply;
use super::status::Status;
use super::*;
use crate::api_key::{KeyId, Verifier};
use crate::backend::{CryptoBackend, CryptoError, DefaultBackend};
use crate::codec::{field, field_mut, read_text, read_u64, write_u64, TextError};
use crate::kdf;
use crate::secret::Secret;
use crate::server_key::{IdentityKey, ServerKeyDocument, ServerKeyEntry, MAX_ENTRIES, SIGNATURE_LEN};

/// Why a request got no sealed answer. The server maps these to HTTP errors or to
/// a signed "server key changed"; none of them reveals anything about API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Wrong length, version or type.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The request names a server key id this server does not (or no longer) hold:
    /// answer with [`Responder::server_key_changed`].
    #[error("request uses unknown or expired server key id")]
    UnknownServerKey,
    /// The ephemeral key is a low-order point.
    #[error("request ephemeral key is invalid: {0}")]
    Crypto(#[from] CryptoError),
    /// Responder configuration: too many keys, or a duplicate key id.
    #[error("server handshake key set is invalid: {0}")]
    KeySet(&'static str),
}

/// Why [`OpenedRequest::authenticate`] refused a request. For logs and metrics
/// only: the peer always sees [`Status::AuthFailed`] (or `Malformed` once
/// authenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// AEAD(k1, key id) did not open: altered request or wrong server key.
    KeyIdUnreadable,
    /// AEAD(k2, payload) did not open: unknown key, wrong secret or revoked key.
    PayloadUnreadable,
    /// The cached static-static value belongs to another server key (server bug).
    StaticStaticMismatch,
    /// Authenticated, but the payload breaks a layout rule.
    PayloadMalformed(&'static str),
}

/// X25519(s, C) for one (server key, API key) pair plus the verifier C: everything
/// the hot path needs from storage. Cache it per key: it never changes.
#[derive(Clone)]
pub struct StaticStatic {
    server_key_id: [u8; 8],
    verifier: Verifier,
    dh: Secret<32>,
}

impl core::fmt::Debug for StaticStatic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticStatic").field("server_key_id", &self.server_key_id).finish_non_exhaustive()
    }
}

struct HandshakeKey<B: CryptoBackend> {
    entry: ServerKeyEntry,
    private: B::StaticKey,
}

/// The server's handshake state: identity, handshake keys and the dummy secret.
pub struct Responder<B: CryptoBackend = DefaultBackend> {
    backend: B,
    identity: IdentityKey,
    keys: Vec<HandshakeKey<B>>,
    dummy_secret: Secret<32>,
}

impl<B: CryptoBackend> core::fmt::Debug for Responder<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Responder")
            .field("backend", &self.backend.name())
            .field("identity", &self.identity)
            .field("keys", &self.keys.iter().map(|k| k.entry.key_id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<B: CryptoBackend> Responder<B> {
    /// A responder with no handshake keys yet. `dummy_secret` derives the
    /// static-static stand-in for unknown keys; keep it stable across restarts so an
    /// unknown id always costs and answers the same.
    pub fn new(backend: B, identity: IdentityKey, dummy_secret: Secret<32>) -> Self {
        Self { backend, identity, keys: Vec::new(), dummy_secret }
    }

    /// Adds a handshake key.
    ///
    /// # Errors
    /// [`RequestError::KeySet`] for a duplicate id or more than the document holds.
    pub fn add_key(
        &mut self,
        key_id: [u8; 8],
        private: &Secret<32>,
        not_before: u64,
        not_after: u64,
    ) -> Result<ServerKeyEntry, RequestError> {
        if self.keys.len() >= MAX_ENTRIES {
            return Err(RequestError::KeySet("at most 4 handshake keys"));
        }
        if self.keys.iter().any(|k| k.entry.key_id == key_id) {
            return Err(RequestError::KeySet("duplicate handshake key id"));
        }
        if not_before > not_after {
            return Err(RequestError::KeySet("not_after is before not_before"));
        }
        let private = self.backend.static_key(private)?;
        let entry = ServerKeyEntry { key_id, public: self.backend.public_key(&private), not_before, not_after };
        self.keys.push(HandshakeKey { entry, private });
        Ok(entry)
    }

    /// Drops keys whose `not_after` has passed.
    pub fn remove_expired(&mut self, now: u64) {
        self.keys.retain(|k| k.entry.not_after >= now);
    }

    /// The identity key.
    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    /// The keys this responder holds.
    pub fn entries(&self) -> impl Iterator<Item = &ServerKeyEntry> {
        self.keys.iter().map(|k| &k.entry)
    }

    /// The signed server key document listing every held key, issued at `now`.
    /// It expires (PROTOCOL.md §3) at `now + lifetime`, or earlier at the `not_after`
    /// of the key clients pick from it at `now`: a document never outlives the key it
    /// steers clients to.
    ///
    /// # Errors
    /// [`crate::DocumentError`] when no key is held, or none is valid at `now`.
    pub fn signed_document(&self, now: u64, lifetime: u64) -> Result<Vec<u8>, crate::DocumentError> {
        let entries: Vec<ServerKeyEntry> = self.entries().copied().collect();
        let unbounded = ServerKeyDocument::new(now, u64::MAX, self.identity.public(), &entries)?;
        let expires_at = now.saturating_add(lifetime).min(unbounded.current(now)?.not_after);
        ServerKeyDocument::new(now, expires_at, self.identity.public(), &entries)?.sign(&self.identity)
    }

    fn key(&self, server_key_id: &[u8; 8], now: u64) -> Option<&HandshakeKey<B>> {
        self.keys.iter().find(|k| &k.entry.key_id == server_key_id && k.entry.not_after >= now)
    }

    /// X25519(s, C) for `verifier` under server key `server_key_id`: compute once
    /// per key and cache.
    ///
    /// # Errors
    /// [`RequestError::UnknownServerKey`]; [`RequestError::Crypto`] for a
    /// low-order verifier (refuse such a key when it is stored).
    pub fn static_static(&self, server_key_id: &[u8; 8], verifier: &Verifier) -> Result<StaticStatic, RequestError> {
        let key = self.keys.iter().find(|k| &k.entry.key_id == server_key_id).ok_or(RequestError::UnknownServerKey)?;
        let dh = self.backend.x25519(&key.private, verifier.as_bytes())?;
        Ok(StaticStatic { server_key_id: *server_key_id, verifier: *verifier, dh })
    }

    /// The stand-in for an unknown or revoked key id: derived from the dummy secret
    /// with two short BLAKE3 calls (sub-microsecond, like a cache lookup), and never
    /// authenticates.
    pub fn dummy_static_static(&self, server_key_id: &[u8; 8], key_id: Option<&KeyId>) -> StaticStatic {
        let id = key_id.map_or([0u8; KEY_ID_LEN], |k| *k.as_bytes());
        let dh = kdf::derive(kdf::LABEL_DUMMY_STATIC, &[self.dummy_secret.expose(), server_key_id, &id]);
        let verifier: [u8; 32] = kdf::derive_public(kdf::LABEL_DUMMY_STATIC, &[dh.expose()]);
        StaticStatic { server_key_id: *server_key_id, verifier: Verifier::from_bytes(verifier), dh }
    }

    /// Parses a request, does X25519(s, e) and opens the API key id.
    ///
    /// # Errors
    /// [`RequestError::Wire`] (answer HTTP 400), [`RequestError::UnknownServerKey`]
    /// (answer [`Self::server_key_changed`]), [`RequestError::Crypto`] (400).
    pub fn open_request<'s, 'r>(
        &'s self,
        request: &'r [u8],
        now: u64,
    ) -> Result<OpenedRequest<'s, 'r, B>, RequestError> {
        let view = RequestView::parse(request)?;
        let key = self.key(view.server_key_id, now).ok_or(RequestError::UnknownServerKey)?;
        // dh_es = X25519(s, e); k1 = KDF(key-id key, S ‖ dh_es ‖ request[0..42])
        let dh_es = self.backend.x25519(&key.private, view.ephemeral)?;
        let prologue = field::<0, OFF_SEALED_KEY_ID, REQUEST_LEN>(view.bytes);
        let k1 = kdf::derive(kdf::LABEL_KEY_ID_KEY, &[&key.entry.public, dh_es.expose(), prologue]);
        let mut key_id = *field::<OFF_SEALED_KEY_ID, KEY_ID_LEN, REQUEST_LEN>(view.bytes);
        let tag = field::<OFF_KEY_ID_TAG, TAG_LEN, REQUEST_LEN>(view.bytes);
        let key_id = self
            .backend
            .open(&self.backend.aead_key(&k1), &HANDSHAKE_NONCE, prologue, &mut key_id, tag)
            .ok()
            .map(|()| KeyId::from_bytes(key_id));
        Ok(OpenedRequest { responder: self, request: view.bytes, server_key_id: *view.server_key_id, k1, key_id })
    }

    /// Writes the signed "server key changed" answer to a request that named an
    /// unknown or expired server key id (PROTOCOL.md §5.3).
    ///
    /// # Errors
    /// [`RequestError::Wire`] if `request` is not a well-formed request;
    /// [`RequestError::KeySet`] if no key is current.
    pub fn server_key_changed(
        &self,
        request: &[u8],
        now: u64,
        out: &mut [u8; RESPONSE_LEN],
    ) -> Result<(), RequestError> {
        let view = RequestView::parse(request)?;
        let current = self
            .keys
            .iter()
            .filter(|k| k.entry.is_valid_at(now))
            .max_by_key(|k| (k.entry.not_before, k.entry.not_after))
            .ok_or(RequestError::KeySet("no handshake key is valid now"))?;
        out.fill(0);
        out[OFF_VERSION] = crate::VERSION;
        out[OFF_TYPE] = MSG_SERVER_KEY_CHANGED;
        *field_mut::<K_OFF_CURRENT_KEY_ID, 8, RESPONSE_LEN>(out) = current.entry.key_id;
        write_u64::<K_OFF_SERVER_TIME, RESPONSE_LEN>(out, now);
        let mut signed = [0u8; OFF_SEALED_KEY_ID + K_OFF_SIGNATURE];
        signed[..OFF_SEALED_KEY_ID].copy_from_slice(field::<0, OFF_SEALED_KEY_ID, REQUEST_LEN>(view.bytes));
        signed[OFF_SEALED_KEY_ID..].copy_from_slice(&out[..K_OFF_SIGNATURE]);
        let signature = self.identity.sign(kdf::SIGN_CONTEXT_KEY_CHANGED, &signed);
        *field_mut::<K_OFF_SIGNATURE, SIGNATURE_LEN, RESPONSE_LEN>(out) = signature;
        Ok(())
    }

    fn seal_response(
        &self,
        key: &Secret<32>,
        reply: &Reply<'_>,
        now: u64,
        nonce: &[u8; RESPONSE_NONCE_LEN],
        out: &mut [u8; RESPONSE_LEN],
    ) {
        out[OFF_VERSION] = crate::VERSION;
        out[OFF_TYPE] = MSG_AUTH_RESPONSE;
        *field_mut::<OFF_RESPONSE_NONCE, RESPONSE_NONCE_LEN, RESPONSE_LEN>(out) = *nonce;
        let (aad, rest) = out.split_at_mut(OFF_RESPONSE_BODY);
        let (body, tag) = rest.split_at_mut(RESPONSE_BODY_LEN);
        let (Ok(body), Ok(tag)) = (<&mut [u8; RESPONSE_BODY_LEN]>::try_from(body), <&mut [u8; TAG_LEN]>::try_from(tag))
        else {
            unreachable!("response layout is fixed at compile time")
        };
        reply.encode(now, body);
        // resp[14..400] = AEAD(key, nonce, aad = resp[0..14], body)
        self.backend.seal(&self.backend.aead_key(key), nonce, aad, body, tag);
    }
}

fn random_nonce(rng: &mut impl CryptoRngCore) -> [u8; RESPONSE_NONCE_LEN] {
    let mut nonce = [0u8; RESPONSE_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// A request whose key id has been read (or found unreadable).
pub struct OpenedRequest<'s, 'r, B: CryptoBackend> {
    responder: &'s Responder<B>,
    request: &'r [u8; REQUEST_LEN],
    server_key_id: [u8; 8],
    k1: Secret<32>,
    key_id: Option<KeyId>,
}

impl<B: CryptoBackend> core::fmt::Debug for OpenedRequest<'_, '_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenedRequest").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl<'s, 'r, B: CryptoBackend> OpenedRequest<'s, 'r, B> {
    /// The API key id, or `None` when AEAD(k1) did not open. Either way, continue
    /// with [`Self::authenticate`] (use the dummy for `None` or unknown ids) so every
    /// failure takes the same path.
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id
    }

    /// The server handshake key id the request used.
    pub fn server_key_id(&self) -> &[u8; 8] {
        &self.server_key_id
    }

    /// Opens the payload with k2 derived from `static_static`.
    ///
    /// # Errors
    /// [`Rejected`], which still writes the (uniform) answer.
    pub fn authenticate(self, static_static: &StaticStatic) -> Result<Authenticated<'s, B>, Rejected<'s, B>> {
        let backend = &self.responder.backend;
        // k2 = KDF(payload key, k1 ‖ dh_ss ‖ C ‖ request[0..74])
        let k2 = kdf::derive(
            kdf::LABEL_PAYLOAD_KEY,
            &[
                self.k1.expose(),
                static_static.dh.expose(),
                static_static.verifier.as_bytes(),
                &self.request[..OFF_SEALED_PAYLOAD],
            ],
        );
        let mut payload = Zeroizing::new(*field::<OFF_SEALED_PAYLOAD, PAYLOAD_LEN, REQUEST_LEN>(self.request));
        let tag = field::<OFF_PAYLOAD_TAG, TAG_LEN, REQUEST_LEN>(self.request);
        let opened = backend.open(
            &backend.aead_key(&k2),
            &HANDSHAKE_NONCE,
            &self.request[..OFF_SEALED_PAYLOAD],
            &mut payload[..],
            tag,
        );
        let reject = |reason, key| Rejected { responder: self.responder, key, reason };
        let Some(key_id) = self.key_id else {
            return Err(reject(RejectReason::KeyIdUnreadable, self.failure_key()));
        };
        if opened.is_err() {
            return Err(reject(RejectReason::PayloadUnreadable, self.failure_key()));
        }
        if static_static.server_key_id != self.server_key_id {
            return Err(reject(RejectReason::StaticStaticMismatch, self.failure_key()));
        }
        let response_key = kdf::derive(kdf::LABEL_RESPONSE_KEY, &[k2.expose(), self.request]);
        if let Err(what) = check_payload(&payload) {
            return Err(reject(RejectReason::PayloadMalformed(what), response_key));
        }
        Ok(Authenticated { responder: self.responder, key_id, payload, response_key })
    }

    fn failure_key(&self) -> Secret<32> {
        kdf::derive(kdf::LABEL_FAILURE_RESPONSE_KEY, &[self.k1.expose(), self.request])
    }
}

fn check_payload(p: &[u8; PAYLOAD_LEN]) -> Result<(), &'static str> {
    let flags = p[P_OFF_FLAGS];
    if flags & !FLAG_SECOND_FACTOR != 0 {
        return Err("unknown flag bits");
    }
    read_text(field::<P_OFF_AUDIENCE, AUDIENCE_SLOT, PAYLOAD_LEN>(p)).map_err(|_: TextError| "audience slot")?;
    read_text(field::<P_OFF_SCOPES, SCOPES_SLOT, PAYLOAD_LEN>(p)).map_err(|_| "scopes slot")?;
    let code_slot = field::<P_OFF_CODE, CODE_SLOT, PAYLOAD_LEN>(p);
    if flags & FLAG_SECOND_FACTOR != 0 {
        let code = read_text(code_slot).map_err(|_| "code slot")?;
        if code.len() < MIN_CODE_LEN || code.contains(' ') {
            return Err("code length");
        }
    } else if field::<P_OFF_OPERATION, OPERATION_ID_LEN, PAYLOAD_LEN>(p) != &[0; OPERATION_ID_LEN]
        || code_slot != &[0; CODE_SLOT]
    {
        return Err("second-factor fields without the flag");
    }
    if p[P_OFF_PADDING..].iter().any(|&b| b != 0) {
        return Err("non-zero padding");
    }
    Ok(())
}

/// A refused request. [`Self::respond`] writes the uniform answer.
pub struct Rejected<'s, B: CryptoBackend> {
    responder: &'s Responder<B>,
    key: Secret<32>,
    reason: RejectReason,
}

impl<B: CryptoBackend> core::fmt::Debug for Rejected<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rejected").field("reason", &self.reason).finish_non_exhaustive()
    }
}

impl<B: CryptoBackend> Rejected<'_, B> {
    /// Why (for logs and metrics; never sent).
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// The status the peer will see.
    pub fn status(&self) -> Status {
        match self.reason {
            RejectReason::PayloadMalformed(_) => Status::Malformed,
            _ => Status::AuthFailed,
        }
    }

    /// Writes the answer: `auth_failed` under the failure key, or `malformed` under
    /// the response key for an authenticated but malformed payload.
    pub fn respond(self, now: u64, rng: &mut impl CryptoRngCore, out: &mut [u8; RESPONSE_LEN]) {
        self.respond_with_nonce(now, &random_nonce(rng), out);
    }

    /// [`Self::respond`] with a caller-chosen nonce: for test vectors only (a nonce
    /// used twice with one request's keys exposes both answers).
    pub fn respond_with_nonce(self, now: u64, nonce: &[u8; RESPONSE_NONCE_LEN], out: &mut [u8; RESPONSE_LEN]) {
        let reply = match self.status() {
            Status::Malformed => Reply::Malformed,
            _ => Reply::AuthFailed,
        };
        self.responder.seal_response(&self.key, &reply, now, nonce, out);
    }
}

/// A request from a client that proved knowledge of the API secret.
pub struct Authenticated<'s, B: CryptoBackend> {
    responder: &'s Responder<B>,
    key_id: KeyId,
    payload: Zeroizing<[u8; PAYLOAD_LEN]>,
    response_key: Secret<32>,
}

impl<B: CryptoBackend> core::fmt::Debug for Authenticated<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Authenticated")
            .field("key_id", &self.key_id)
            .field("timestamp", &self.timestamp())
            .field("audience", &self.audience())
            .field("scopes", &self.scopes())
            .field("second_factor", &self.second_factor().is_some())
            .finish_non_exhaustive()
    }
}

impl<B: CryptoBackend> Authenticated<'_, B> {
    /// The authenticated API key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    /// Client timestamp, unix seconds.
    pub fn timestamp(&self) -> u64 {
        read_u64::<P_OFF_TIMESTAMP, PAYLOAD_LEN>(&self.payload)
    }
    /// The random request nonce.
    pub fn nonce(&self) -> &[u8; REQUEST_NONCE_LEN] {
        field::<P_OFF_NONCE, REQUEST_NONCE_LEN, PAYLOAD_LEN>(&self.payload)
    }
    /// Requested audience ("" = server default).
    pub fn audience(&self) -> &str {
        read_text(field::<P_OFF_AUDIENCE, AUDIENCE_SLOT, PAYLOAD_LEN>(&self.payload)).unwrap_or_default()
    }
    /// Requested scopes, space separated ("" = all of the key's).
    pub fn scopes(&self) -> &str {
        read_text(field::<P_OFF_SCOPES, SCOPES_SLOT, PAYLOAD_LEN>(&self.payload)).unwrap_or_default()
    }
    /// Step-up operation id and code, when the client sent one.
    pub fn second_factor(&self) -> Option<([u8; OPERATION_ID_LEN], &str)> {
        if self.payload[P_OFF_FLAGS] & FLAG_SECOND_FACTOR == 0 {
            return None;
        }
        let code = read_text(field::<P_OFF_CODE, CODE_SLOT, PAYLOAD_LEN>(&self.payload)).ok()?;
        Some((*field::<P_OFF_OPERATION, OPERATION_ID_LEN, PAYLOAD_LEN>(&self.payload), code))
    }

    /// Identifies this request in the replay cache: BLAKE3 over key id ‖ nonce.
    /// Identical for a replayed copy, different for any other request.
    pub fn replay_id(&self) -> [u8; 16] {
        kdf::derive_public(kdf::LABEL_REPLAY_ID, &[self.key_id.as_bytes(), self.nonce()])
    }

    /// True when the client timestamp is within `window` seconds of `now` and not
    /// before `earliest` (the server's start time, so a restart with an empty replay
    /// cache cannot accept requests captured before it).
    pub fn timestamp_acceptable(&self, now: u64, window: u64, earliest: u64) -> bool {
        let ts = self.timestamp();
        ts >= earliest && ts.abs_diff(now) <= window
    }

    /// Seals `reply` under the response key (only this client can read it) with a
    /// fresh random nonce from `rng`.
    pub fn respond(self, reply: &Reply<'_>, now: u64, rng: &mut impl CryptoRngCore, out: &mut [u8; RESPONSE_LEN]) {
        self.respond_with_nonce(reply, now, &random_nonce(rng), out);
    }

    /// [`Self::respond`] with a caller-chosen nonce: for test vectors only (a nonce
    /// used twice with one request's keys exposes both answers).
    pub fn respond_with_nonce(
        self,
        reply: &Reply<'_>,
        now: u64,
        nonce: &[u8; RESPONSE_NONCE_LEN],
        out: &mut [u8; RESPONSE_LEN],
    ) {
        self.responder.seal_response(&self.response_key, reply, now, nonce, out);
    }
}
