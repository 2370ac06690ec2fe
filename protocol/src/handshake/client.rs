//! Client side of the handshake (PROTOCOL.md §6.1).
//!
//! [`ClientHandshake`] is long-lived: it holds the API key's static key, the server
//! key it talks to and the cached static-static DH, so each handshake costs the
//! client one ephemeral key and one DH. [`ClientHandshake::start`] writes a request
//! and returns an [`AwaitingResponse`] that is consumed by
//! [`AwaitingResponse::finish`]: spent ephemeral keys cannot be reused.

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

pub use super::body::Outcome;
pub use super::body::TokenGrant;
use super::*;
use crate::api_key::{ApiKey, KeyId, Verifier};
use crate::backend::{CryptoBackend, CryptoError, DefaultBackend};
use crate::codec::{field, field_mut, read_u64, write_text, write_u64};
use crate::kdf;
use crate::secret::Secret;
use crate::server_key::{verify_signature, DocumentError, ServerKeyDocument, ServerKeyEntry};

/// Why the client could not build a request or read a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The response bytes are not a version-1 response of the fixed length.
    #[error("handshake response rejected: {0}")]
    Wire(#[from] WireError),
    /// A request field does not fit the protocol (too long, bad characters).
    #[error("cannot build handshake request: {0}")]
    InvalidRequest(&'static str),
    /// The server key document is unusable.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A primitive refused a key (the server public key is a low-order point).
    #[error("server handshake key is unusable: {0}")]
    Crypto(#[from] CryptoError),
    /// The response did not decrypt under this handshake's keys: it was altered, or
    /// it answers a different request.
    #[error("handshake response could not be decrypted: altered in transit or not an answer to this request")]
    ResponseUnreadable,
    /// The response decrypted but holds something no honest server sends.
    #[error("handshake response is invalid: {0}")]
    ResponseInvalid(&'static str),
    /// A "server key changed" answer whose signature does not verify under the pinned
    /// identity: ignore it (someone is interfering) and retry later.
    #[error("\"server key changed\" answer has an invalid signature: not from the pinned server")]
    KeyChangedSignature,
}

/// A prepared client: API key, server handshake key and cached static-static DH.
pub struct ClientHandshake<B: CryptoBackend = DefaultBackend> {
    backend: B,
    key_id: KeyId,
    verifier: Verifier,
    server: ServerKeyEntry,
    identity: [u8; 32],
    /// X25519(c, S): fixed per (API key, server key), so computed once.
    static_static: Secret<32>,
}

impl<B: CryptoBackend> ClientHandshake<B> {
    /// Prepares handshakes with `api_key` against the document's current key at `now`.
    /// The document must already be verified and pinned by the caller.
    ///
    /// # Errors
    /// [`HandshakeError::Document`] when no key is valid at `now`;
    /// [`HandshakeError::Crypto`] for a low-order server key.
    pub fn new(backend: B, api_key: &ApiKey, document: &ServerKeyDocument, now: u64) -> Result<Self, HandshakeError> {
        let server = *document.current(now)?;
        Self::with_server_key(backend, api_key, server, *document.identity())
    }

    /// Like [`Self::new`] with an explicit server key entry and identity key.
    ///
    /// # Errors
    /// [`HandshakeError::Crypto`] for a low-order server key.
    pub fn with_server_key(
        backend: B,
        api_key: &ApiKey,
        server: ServerKeyEntry,
        identity: [u8; 32],
    ) -> Result<Self, HandshakeError> {
        let client_static = backend.static_key(&api_key.client_static_private())?;
        let verifier = Verifier::from_bytes(backend.public_key(&client_static));
        let static_static = backend.x25519(&client_static, &server.public)?;
        Ok(Self { backend, key_id: api_key.id(), verifier, server, identity, static_static })
    }

    /// The server key this client talks to.
    pub fn server_key(&self) -> &ServerKeyEntry {
        &self.server
    }

    /// Writes a request into `out` with a fresh ephemeral key and nonce from `rng`.
    ///
    /// # Errors
    /// [`HandshakeError::InvalidRequest`] when audience, scopes or code do not fit.
    pub fn start(
        &self,
        request: &ClientRequest<'_>,
        now: u64,
        rng: &mut impl CryptoRngCore,
        out: &mut [u8; REQUEST_LEN],
    ) -> Result<AwaitingResponse<B>, HandshakeError> {
        let ephemeral = Secret::random(rng);
        let mut nonce = [0u8; REQUEST_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.start_with_ephemeral(request, now, &ephemeral, &nonce, out)
    }

    /// [`Self::start`] with caller-chosen ephemeral key and nonce. For test vectors
    /// only: reusing either breaks the protocol's guarantees.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with_ephemeral(
        &self,
        request: &ClientRequest<'_>,
        now: u64,
        ephemeral: &Secret<32>,
        nonce: &[u8; REQUEST_NONCE_LEN],
        out: &mut [u8; REQUEST_LEN],
    ) -> Result<AwaitingResponse<B>, HandshakeError> {
        let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
        encode_payload(request, now, nonce, &mut payload)?;

        let e = self.backend.static_key(ephemeral)?;
        out.fill(0);
        out[OFF_VERSION] = crate::VERSION;
        out[OFF_TYPE] = MSG_AUTH_REQUEST;
        *field_mut::<OFF_SERVER_KEY_ID, 8, REQUEST_LEN>(out) = self.server.key_id;
        *field_mut::<OFF_EPHEMERAL, 32, REQUEST_LEN>(out) = self.backend.public_key(&e);

        // dh_es = X25519(e, S); k1 = KDF(key-id key, S ‖ dh_es ‖ request[0..42])
        let dh_es = self.backend.x25519(&e, &self.server.public)?;
        let k1 = kdf::derive(kdf::LABEL_KEY_ID_KEY, &[&self.server.public, dh_es.expose(), &out[..OFF_SEALED_KEY_ID]]);
        // request[42..74] = AEAD(k1, 0, aad = request[0..42], key_id)
        {
            let (prologue, rest) = out.split_at_mut(OFF_SEALED_KEY_ID);
            let (sealed, rest) = rest.split_at_mut(KEY_ID_LEN);
            sealed.copy_from_slice(self.key_id.as_bytes());
            let tag: &mut [u8; TAG_LEN] = rest.first_chunk_mut().ok_or(HandshakeError::InvalidRequest("layout"))?;
            self.backend.seal(&self.backend.aead_key(&k1), &HANDSHAKE_NONCE, prologue, sealed, tag);
        }
        // k2 = KDF(payload key, k1 ‖ dh_ss ‖ C ‖ request[0..74])
        let k2 = kdf::derive(
            kdf::LABEL_PAYLOAD_KEY,
            &[k1.expose(), self.static_static.expose(), self.verifier.as_bytes(), &out[..OFF_SEALED_PAYLOAD]],
        );
        // request[74..384] = AEAD(k2, 0, aad = request[0..74], payload)
        {
            let (head, rest) = out.split_at_mut(OFF_SEALED_PAYLOAD);
            let (sealed, tag) = rest.split_at_mut(PAYLOAD_LEN);
            sealed.copy_from_slice(&payload[..]);
            let tag: &mut [u8; TAG_LEN] = tag.try_into().map_err(|_| HandshakeError::InvalidRequest("layout"))?;
            self.backend.seal(&self.backend.aead_key(&k2), &HANDSHAKE_NONCE, head, sealed, tag);
        }

        let response_key = kdf::derive(kdf::LABEL_RESPONSE_KEY, &[k2.expose(), &out[..]]);
        let failure_key = kdf::derive(kdf::LABEL_FAILURE_RESPONSE_KEY, &[k1.expose(), &out[..]]);
        Ok(AwaitingResponse {
            backend: self.backend.clone(),
            response_key,
            failure_key,
            prologue: *field::<0, OFF_SEALED_KEY_ID, REQUEST_LEN>(out),
            identity: self.identity,
        })
    }
}

impl<B: CryptoBackend> core::fmt::Debug for ClientHandshake<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("backend", &self.backend.name())
            .field("key_id", &self.key_id)
            .field("server_key_id", &self.server.key_id)
            .finish_non_exhaustive()
    }
}

fn encode_payload(
    request: &ClientRequest<'_>,
    now: u64,
    nonce: &[u8; REQUEST_NONCE_LEN],
    payload: &mut [u8; PAYLOAD_LEN],
) -> Result<(), HandshakeError> {
    write_u64::<P_OFF_TIMESTAMP, PAYLOAD_LEN>(payload, now);
    *field_mut::<P_OFF_NONCE, REQUEST_NONCE_LEN, PAYLOAD_LEN>(payload) = *nonce;
    write_text(field_mut::<P_OFF_AUDIENCE, AUDIENCE_SLOT, PAYLOAD_LEN>(payload), request.audience)
        .map_err(|_| HandshakeError::InvalidRequest("audience must be at most 64 printable ASCII bytes"))?;
    write_text(field_mut::<P_OFF_SCOPES, SCOPES_SLOT, PAYLOAD_LEN>(payload), request.scopes)
        .map_err(|_| HandshakeError::InvalidRequest("scopes must be at most 128 printable ASCII bytes"))?;
    if let Some(second) = &request.second_factor {
        if second.code.len() < MIN_CODE_LEN || second.code.len() > MAX_CODE_LEN || second.code.contains(' ') {
            return Err(HandshakeError::InvalidRequest("second-factor code must be 4 to 10 characters without spaces"));
        }
        payload[P_OFF_FLAGS] = FLAG_SECOND_FACTOR;
        *field_mut::<P_OFF_OPERATION, OPERATION_ID_LEN, PAYLOAD_LEN>(payload) = second.operation;
        write_text(field_mut::<P_OFF_CODE, CODE_SLOT, PAYLOAD_LEN>(payload), second.code)
            .map_err(|_| HandshakeError::InvalidRequest("second-factor code must be printable ASCII"))?;
    }
    Ok(())
}

/// A sent request waiting for its response. Consumed by [`Self::finish`].
pub struct AwaitingResponse<B: CryptoBackend = DefaultBackend> {
    backend: B,
    response_key: Secret<32>,
    failure_key: Secret<32>,
    /// request[0..42]: signed into a "server key changed" answer.
    prologue: [u8; OFF_SEALED_KEY_ID],
    identity: [u8; 32],
}

impl<B: CryptoBackend> core::fmt::Debug for AwaitingResponse<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingResponse").finish_non_exhaustive()
    }
}

impl<B: CryptoBackend> AwaitingResponse<B> {
    /// Reads the server's answer.
    ///
    /// # Errors
    /// [`HandshakeError`] when the bytes are not a genuine answer to this request;
    /// every genuine answer, including refusals, is an `Ok(Outcome)`.
    pub fn finish(self, response: &[u8]) -> Result<Outcome, HandshakeError> {
        let (msg, kind) = check_header::<RESPONSE_LEN>(response, &[MSG_AUTH_RESPONSE, MSG_SERVER_KEY_CHANGED])?;
        if kind == MSG_SERVER_KEY_CHANGED {
            return self.finish_key_changed(msg);
        }
        let aad = field::<0, OFF_RESPONSE_BODY, RESPONSE_LEN>(msg);
        let nonce = field::<OFF_RESPONSE_NONCE, RESPONSE_NONCE_LEN, RESPONSE_LEN>(msg);
        let tag = field::<OFF_RESPONSE_TAG, TAG_LEN, RESPONSE_LEN>(msg);
        let sealed = field::<OFF_RESPONSE_BODY, RESPONSE_BODY_LEN, RESPONSE_LEN>(msg);

        // Try the authenticated key first, then the failure key (PROTOCOL.md §5.1).
        let mut body = Zeroizing::new(*sealed);
        if self.open(&self.response_key, nonce, aad, &mut body, tag) {
            return Outcome::decode(&body).ok_or(HandshakeError::ResponseInvalid("unknown status or field value"));
        }
        let mut body = Zeroizing::new(*sealed);
        if self.open(&self.failure_key, nonce, aad, &mut body, tag) {
            let outcome =
                Outcome::decode(&body).ok_or(HandshakeError::ResponseInvalid("unknown status or field value"))?;
            if !outcome.status().allowed_unauthenticated() {
                return Err(HandshakeError::ResponseInvalid("status not allowed before authentication"));
            }
            return Ok(outcome);
        }
        Err(HandshakeError::ResponseUnreadable)
    }

    fn open(
        &self,
        key: &Secret<32>,
        nonce: &[u8; RESPONSE_NONCE_LEN],
        aad: &[u8],
        body: &mut [u8; RESPONSE_BODY_LEN],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        self.backend.open(&self.backend.aead_key(key), nonce, aad, body, tag).is_ok()
    }

    fn finish_key_changed(self, msg: &[u8; RESPONSE_LEN]) -> Result<Outcome, HandshakeError> {
        let signature = field::<K_OFF_SIGNATURE, { crate::server_key::SIGNATURE_LEN }, RESPONSE_LEN>(msg);
        let mut signed = [0u8; OFF_SEALED_KEY_ID + K_OFF_SIGNATURE];
        signed[..OFF_SEALED_KEY_ID].copy_from_slice(&self.prologue);
        signed[OFF_SEALED_KEY_ID..].copy_from_slice(&msg[..K_OFF_SIGNATURE]);
        if !verify_signature(&self.identity, kdf::SIGN_CONTEXT_KEY_CHANGED, &signed, signature) {
            return Err(HandshakeError::KeyChangedSignature);
        }
        if msg[K_OFF_SIGNATURE + crate::server_key::SIGNATURE_LEN..].iter().any(|&b| b != 0) {
            return Err(HandshakeError::ResponseInvalid("non-zero padding after signature"));
        }
        Ok(Outcome::ServerKeyChanged {
            current_key_id: *field::<K_OFF_CURRENT_KEY_ID, 8, RESPONSE_LEN>(msg),
            server_time: read_u64::<K_OFF_SERVER_TIME, RESPONSE_LEN>(msg),
        })
    }
}
