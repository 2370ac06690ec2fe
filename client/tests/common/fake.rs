//! A sans-IO stand-in for the onetrip server, built on the protocol's `Responder`: the
//! same steps a real server takes (open, static-static or dummy, authenticate, clock
//! window, replay cache, step-up, grant). The core's unit tests drive it directly; the
//! integration tests wrap it in a hyper server on 127.0.0.1.
#![allow(dead_code)]

use std::collections::HashSet;

use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::{Channel, RESPONSE_LEN};
use onetrip_protocol::{
    ApiKey, Claims, DefaultBackend, Fingerprint, IdentityKey, RequestError, Responder, Secret, TokenKeyring,
    TokenVerifier,
};
use rand_core::{OsRng, RngCore};

/// The audience the fake grants by default and its verifier checks.
pub const AUDIENCE: &str = "db";
/// The operation id of the fake's step-up.
pub const OPERATION: [u8; 16] = *b"operation-000001";
/// Masked destination the fake reports for step-up codes.
pub const DESTINATION: &str = "c***@example.com";

/// One fake server: identity, one handshake key, token keys, registered API keys.
pub struct FakeServer {
    backend: DefaultBackend,
    identity_seed: Secret<32>,
    responder: Responder,
    key_serial: u8,
    keyring: TokenKeyring,
    keys: Vec<ApiKey>,
    replay: HashSet<[u8; 16]>,
    /// Token lifetime in seconds.
    pub ttl: u64,
    /// Accepted clock difference in seconds.
    pub window: u64,
    /// Step-up: keys need this code (with [`OPERATION`]) before a grant.
    pub otp_code: Option<String>,
    /// Answer every authenticated request with this instead of a grant.
    pub force: Option<Reply<'static>>,
    /// Answer every request with a "server key changed", even for a current key.
    pub always_key_changed: bool,
    /// Grants made so far.
    pub grants: usize,
    /// Lifetime of the documents it signs (seconds).
    pub document_lifetime: u64,
    /// Serve this document instead of a fresh one (a captured, replayed copy).
    pub replayed_document: Option<Vec<u8>>,
}

impl FakeServer {
    /// A server whose handshake key is valid around `now`, with `api_key` registered.
    pub fn new(api_key: &ApiKey, now: u64) -> Self {
        let backend = DefaultBackend::default();
        let identity_seed = Secret::random(&mut OsRng);
        let responder = Responder::new(backend, IdentityKey::from_seed(&identity_seed), Secret::random(&mut OsRng));
        let mut server = Self {
            backend,
            identity_seed,
            responder,
            key_serial: 0,
            keyring: TokenKeyring::new(*b"tk01", Secret::random(&mut OsRng)),
            keys: vec![api_key.clone()],
            replay: HashSet::new(),
            ttl: 900,
            window: 60,
            otp_code: None,
            force: None,
            always_key_changed: false,
            grants: 0,
            document_lifetime: onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS,
            replayed_document: None,
        };
        server.rotate(now);
        server
    }

    /// The identity fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.responder.identity().fingerprint()
    }

    /// `GET /v1/server-key`: signed at `now`, or the replayed copy if one is set.
    pub fn document(&self, now: u64) -> Vec<u8> {
        match &self.replayed_document {
            Some(doc) => doc.clone(),
            None => self.responder.signed_document(now, self.document_lifetime).expect("document"),
        }
    }

    /// A verifier for [`AUDIENCE`], as a resource server would hold it.
    pub fn verifier(&self) -> TokenVerifier {
        self.keyring.for_audience(self.backend, AUDIENCE).expect("verifier")
    }

    /// Replaces the handshake key with a new one (new key id); the old id is
    /// answered with a signed "server key changed" from now on.
    pub fn rotate(&mut self, now: u64) {
        self.key_serial += 1;
        let mut responder =
            Responder::new(self.backend, IdentityKey::from_seed(&self.identity_seed), Secret::random(&mut OsRng));
        let mut id = *b"srvkey00";
        id[7] = b'0' + self.key_serial;
        responder.add_key(id, &Secret::random(&mut OsRng), now.saturating_sub(3600), now + 86_400).expect("key");
        self.responder = responder;
    }

    /// Registers another API key.
    pub fn register(&mut self, key: &ApiKey) {
        self.keys.push(key.clone());
    }

    /// `POST /v1/auth`: the 400-byte answer for `request` at server time `now`.
    ///
    /// # Panics
    /// On a request that is not well formed (a real server answers HTTP 400).
    pub fn answer(&mut self, request: &[u8], now: u64) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        let opened = match self.responder.open_request(request, now) {
            Ok(_) if self.always_key_changed => {
                self.responder.server_key_changed(request, now, &mut out).expect("key changed");
                return out;
            }
            Ok(opened) => opened,
            Err(RequestError::UnknownServerKey) => {
                self.responder.server_key_changed(request, now, &mut out).expect("key changed");
                return out;
            }
            Err(e) => panic!("malformed request: {e}"),
        };
        let server_key_id = *opened.server_key_id();
        let ss = match self.keys.iter().find(|k| Some(k.id()) == opened.key_id()) {
            Some(k) => self.responder.static_static(&server_key_id, &k.verifier(&self.backend).expect("verifier")),
            None => Ok(self.responder.dummy_static_static(&server_key_id, opened.key_id().as_ref())),
        }
        .expect("static-static");
        let auth = match opened.authenticate(&ss) {
            Ok(auth) => auth,
            Err(rejected) => {
                rejected.respond(now, &mut OsRng, &mut out);
                return out;
            }
        };
        if !auth.timestamp_acceptable(now, self.window, 0) {
            auth.respond(&Reply::ClockSkew, now, &mut OsRng, &mut out);
            return out;
        }
        if !self.replay.insert(auth.replay_id()) {
            auth.respond(&Reply::AuthFailed, now, &mut OsRng, &mut out);
            return out;
        }
        if let Some(reply) = self.force {
            auth.respond(&reply, now, &mut OsRng, &mut out);
            return out;
        }
        let mut second_factor = false;
        if let Some(code) = &self.otp_code {
            let reply = match auth.second_factor() {
                None => Some(Reply::SecondFactorRequired {
                    operation: OPERATION,
                    channel: Channel::Console,
                    destination: DESTINATION,
                }),
                Some((op, c)) if op == OPERATION && c == code => None,
                Some(_) => Some(Reply::SecondFactorFailed { attempts_left: 2 }),
            };
            if let Some(reply) = reply {
                auth.respond(&reply, now, &mut OsRng, &mut out);
                return out;
            }
            second_factor = true;
        }
        let audience = if auth.audience().is_empty() { AUDIENCE } else { auth.audience() };
        let scopes = if auth.scopes().is_empty() { "db:read db:write" } else { auth.scopes() };
        let session_key = Secret::random(&mut OsRng);
        let mut token_id = [0u8; 16];
        OsRng.fill_bytes(&mut token_id);
        let expires_at = now + self.ttl;
        let claims =
            Claims::new(token_id, auth.key_id(), now, expires_at, second_factor, audience, scopes, session_key.clone())
                .expect("claims");
        let token = self.keyring.for_audience(self.backend, audience).expect("keys").seal(&claims, &mut OsRng);
        let token = token.expect("seal");
        auth.respond(
            &Reply::Granted { token: &token, session_key: &session_key, expires_at },
            now,
            &mut OsRng,
            &mut out,
        );
        self.grants += 1;
        out
    }
}
