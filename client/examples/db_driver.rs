//! How a database driver uses onetrip, end to end, in one process:
//!
//! 1. the driver (client side) gets a token with the blocking client and signs its
//!    connection handshake with proof of possession (method `CONNECT`, path = the
//!    database name, body = the startup packet);
//! 2. the database (resource-server side) verifies token and proof in-process with
//!    `TokenVerifier`, holding only its own audience key.
//!
//! ```sh
//! onetrip keys create --name app --scope db:read --audience db      # → otk_…
//! onetrip server-key show                                           # → SHA256:…
//! onetrip audience-key db                                           # → key id, key
//! ONETRIP_SERVER=http://127.0.0.1:7420 ONETRIP_API_KEY=otk_… ONETRIP_FINGERPRINT=SHA256:… \
//! ONETRIP_AUDIENCE=db ONETRIP_AUDIENCE_KEY=<key id>:<key> cargo run -p onetrip-client --example db_driver
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use onetrip_client::{BlockingClient, Client, DefaultBackend, PopProof, Secret, Token, TokenVerifier};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn usage() -> ! {
    eprintln!(
        "usage: set ONETRIP_SERVER, ONETRIP_API_KEY, ONETRIP_FINGERPRINT, ONETRIP_AUDIENCE (default db) and\n\
         ONETRIP_AUDIENCE_KEY=<key id hex>:<key hex> (from `onetrip audience-key <audience>`), then run again"
    );
    std::process::exit(2)
}

fn main() {
    let (Some(server), Some(api_key), Some(fingerprint), Some(audience_key)) =
        (env("ONETRIP_SERVER"), env("ONETRIP_API_KEY"), env("ONETRIP_FINGERPRINT"), env("ONETRIP_AUDIENCE_KEY"))
    else {
        usage()
    };
    let audience = env("ONETRIP_AUDIENCE").unwrap_or_else(|| "db".into());
    if let Err(e) = run(&server, &api_key, &fingerprint, &audience, &audience_key) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(server: &str, api_key: &str, fingerprint: &str, audience: &str, audience_key: &str) -> Result<(), String> {
    // ---- driver side ----
    let pin = fingerprint.parse().map_err(|e| format!("ONETRIP_FINGERPRINT: {e}"))?;
    let builder = Client::builder().server(server).api_key(api_key).pin(pin).audience(audience);
    let client = BlockingClient::build(builder).map_err(|e| e.to_string())?;
    let database = "orders";
    let startup_packet = b"user=app database=orders";
    let signed = client.sign_request("CONNECT", database, startup_packet).map_err(|e| e.to_string())?;
    println!("driver: got a token in one roundtrip ({} handshake so far)", client.handshakes());
    println!("driver: connection handshake carries `Authorization: Onetrip <token>` and `Onetrip-PoP: <proof>`");

    // ---- database side (in-process verification) ----
    let (key_id, key) = audience_key.split_once(':').ok_or("ONETRIP_AUDIENCE_KEY must be <key id>:<key>")?;
    let key_id: [u8; 4] = hex(key_id).and_then(|b| b.try_into().ok()).ok_or("audience key id: 8 hex characters")?;
    let key: [u8; 32] = hex(key).and_then(|b| b.try_into().ok()).ok_or("audience key: 64 hex characters")?;
    let verifier = TokenVerifier::new(DefaultBackend::default(), audience, &[(key_id, Secret::new(key))])
        .map_err(|e| e.to_string())?;
    let token_b64 = signed.authorization().strip_prefix("Onetrip ").ok_or("unexpected scheme")?;
    let token = Token::from_base64(token_b64).map_err(|e| e.to_string())?;
    let proof = PopProof::from_header(signed.pop()).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = verifier
        .verify_request(token.as_bytes(), &proof, "CONNECT", database, startup_packet, now, 60)
        .map_err(|e| format!("database refused the connection: {e}"))?;
    println!(
        "database: accepted key {} for audience {} with scopes [{}], token expires at {}",
        claims.api_key_id,
        claims.audience(),
        claims.scopes(),
        claims.expires_at
    );
    // A replayed handshake for another database fails: the proof covers the path.
    match verifier.verify_request(token.as_bytes(), &proof, "CONNECT", "billing", startup_packet, now, 60) {
        Err(e) => println!("database: the same proof for another database is refused ({e})"),
        Ok(_) => return Err("a proof for another database was accepted".into()),
    }
    Ok(())
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
