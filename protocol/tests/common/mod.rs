//! Shared fixtures for the protocol's integration tests: a deterministic RNG and a
//! complete server/client setup on any backend.
#![allow(dead_code)]

use onetrip_protocol::api_key::{ApiKey, KeyId};
use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::token::Claims;
use onetrip_protocol::{
    CryptoBackend, IdentityKey, Outcome, Responder, Secret, ServerKeyDocument, TokenKeyring, TokenVerifier,
};
use rand_core::{CryptoRng, RngCore};

/// Deterministic CSPRNG-shaped generator: BLAKE3 XOF of a seed. Tests only.
pub struct TestRng(blake3::OutputReader);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        let mut h = blake3::Hasher::new_derive_key("onetrip test rng");
        h.update(&seed.to_be_bytes());
        Self(h.finalize_xof())
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}
impl CryptoRng for TestRng {}

pub const NOW: u64 = 1_790_000_000;
pub const SERVER_KEY_ID: [u8; 8] = *b"srvkey01";
pub const AUDIENCE: &str = "db.example";

/// One server (identity, handshake key, token keys) and one registered API key.
pub struct Fixture<B: CryptoBackend> {
    pub backend: B,
    pub responder: Responder<B>,
    pub document: ServerKeyDocument,
    pub document_bytes: Vec<u8>,
    pub api_key: ApiKey,
    pub keyring: TokenKeyring,
    pub tokens: TokenVerifier<B>,
}

impl<B: CryptoBackend> Fixture<B> {
    pub fn new(seed: u64) -> Self {
        let backend = B::default();
        let mut rng = TestRng::new(seed);
        let identity = IdentityKey::generate(&mut rng);
        let mut responder = Responder::new(backend.clone(), identity, Secret::random(&mut rng));
        responder.add_key(SERVER_KEY_ID, &Secret::random(&mut rng), NOW - 3600, NOW + 86_400).unwrap();
        let document_bytes =
            responder.signed_document(NOW, onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS).unwrap();
        let document = ServerKeyDocument::parse(&document_bytes).unwrap();
        let api_key = ApiKey::generate(&mut rng);
        let keyring = TokenKeyring::new(*b"tk01", Secret::random(&mut rng));
        let tokens = keyring.for_audience(backend.clone(), AUDIENCE).unwrap();
        Self { backend, responder, document, document_bytes, api_key, keyring, tokens }
    }

    pub fn client(&self) -> onetrip_protocol::ClientHandshake<B> {
        self.client_for(&self.api_key)
    }

    pub fn client_for(&self, key: &ApiKey) -> onetrip_protocol::ClientHandshake<B> {
        onetrip_protocol::ClientHandshake::new(self.backend.clone(), key, &self.document, NOW).unwrap()
    }

    /// Builds a request with `rng`, returns (request bytes, pending client state).
    pub fn request(
        &self,
        key: &ApiKey,
        req: &ClientRequest<'_>,
        rng: &mut TestRng,
    ) -> ([u8; REQUEST_LEN], onetrip_protocol::AwaitingResponse<B>) {
        let mut out = [0u8; REQUEST_LEN];
        let pending = self.client_for(key).start(req, NOW, rng, &mut out).unwrap();
        (out, pending)
    }

    /// The server path as a real server runs it, with `registered` as its key table.
    pub fn serve(&self, request: &[u8], registered: &[&ApiKey], reply: &Reply<'_>) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        let opened = self.responder.open_request(request, NOW).unwrap();
        let server_key_id = *opened.server_key_id();
        let ss = match registered.iter().find(|k| Some(k.id()) == opened.key_id()) {
            Some(k) => self.responder.static_static(&server_key_id, &k.verifier(&self.backend).unwrap()).unwrap(),
            None => self.responder.dummy_static_static(&server_key_id, opened.key_id().as_ref()),
        };
        match opened.authenticate(&ss) {
            Ok(auth) => auth.respond(reply, NOW, &mut TestRng::new(0x5EED), &mut out),
            Err(rejected) => rejected.respond(NOW, &mut TestRng::new(0x5EED), &mut out),
        }
        out
    }

    /// Mints a token for the fixture's key.
    pub fn mint(&self, key_id: KeyId, session_key: &Secret<32>, rng: &mut TestRng) -> onetrip_protocol::Token {
        let claims =
            Claims::new([7; 16], key_id, NOW, NOW + 900, false, AUDIENCE, "db:read db:write", session_key.clone())
                .unwrap();
        self.tokens.seal(&claims, rng).unwrap()
    }

    /// A full successful handshake: returns the outcome the client sees.
    pub fn full_handshake(&self, rng: &mut TestRng) -> Outcome {
        let req = ClientRequest { audience: AUDIENCE, scopes: "db:read", second_factor: None };
        let (request, pending) = self.request(&self.api_key, &req, rng);
        let session_key = Secret::random(rng);
        let token = self.mint(self.api_key.id(), &session_key, rng);
        let response = self.serve(
            &request,
            &[&self.api_key],
            &Reply::Granted { token: &token, session_key: &session_key, expires_at: NOW + 900 },
        );
        pending.finish(&response).unwrap()
    }
}

/// Runs `f` once per compiled-in backend.
#[macro_export]
macro_rules! for_each_backend {
    ($f:ident) => {{
        #[cfg(feature = "rustcrypto")]
        $f::<onetrip_protocol::backend::RustCrypto>();
        #[cfg(feature = "aws-lc")]
        $f::<onetrip_protocol::backend::AwsLc>();
    }};
}
