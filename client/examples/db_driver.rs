//! How a database driver uses onetrip, end to end, in one process:
//!
//! 1. the driver (client side) gets a token with the blocking client and signs its
//!    connection handshake with proof of possession (method `CONNECT`, path = the
//!    database name, body = the startup packet) and attaches both to the handshake;
//! 2. the database (resource-server side) verifies token and proof in-process with
//!    `TokenVerifier::verify_request`, holding only its own audience key: no call to
//!    the onetrip server.
//!
//! When the key needs a second factor (`--require-otp`), the driver asks for the code
//! on the terminal and finishes with `token_with_code`.
//!
//! ```sh
//! onetrip keys create --name app --scope db:read --audience db      # → otk_…
//! #   (or, with step-up: … --require-otp --otp-to console:me, and serve --otp-console-codes)
//! onetrip server-key show                                           # → SHA256:…
//! onetrip audience-key db                                           # → key id, key
//! ONETRIP_SERVER=http://127.0.0.1:7420 ONETRIP_API_KEY=otk_… ONETRIP_FINGERPRINT=SHA256:… \
//! ONETRIP_AUDIENCE_KEY=<key id hex>:<key hex> cargo run -p onetrip-client --example db_driver
//! ```

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use onetrip_client::{
    BlockingClient, Client, DefaultBackend, Error, PopProof, Secret, Token, TokenVerifier, AUTHORIZATION_SCHEME,
};

/// Accepted difference between the proof's timestamp and the database's clock.
const POP_WINDOW_SECS: u64 = 60;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn usage() -> ! {
    eprintln!(
        "usage: ONETRIP_SERVER=<url> ONETRIP_API_KEY=<otk_…> ONETRIP_FINGERPRINT=<SHA256:…> \\\n\
         \x20      ONETRIP_AUDIENCE_KEY=<key id hex>:<key hex> [ONETRIP_AUDIENCE=db] \\\n\
         \x20      cargo run -p onetrip-client --example db_driver\n\n\
         ONETRIP_SERVER       the onetrip server, e.g. http://127.0.0.1:7420\n\
         ONETRIP_API_KEY      from `onetrip keys create --audience db`\n\
         ONETRIP_FINGERPRINT  from `onetrip server-key show`\n\
         ONETRIP_AUDIENCE_KEY from `onetrip audience-key db` (what the database holds)\n\
         ONETRIP_AUDIENCE     the database's audience name (default: db)"
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
    let startup_packet = b"user=app database=orders application_name=db_driver";
    println!("driver: asking {server} for a token for audience `{audience}` (one roundtrip)");
    let signed = match client.sign_request("CONNECT", database, startup_packet) {
        // Keys created with --require-otp (or asking for an MFA scope) need a code.
        Err(Error::SecondFactorRequired { operation, channel, destination }) => {
            eprint!("driver: enter the code sent by {} to {destination}: ", channel.as_str());
            let mut code = String::new();
            std::io::stdin().read_line(&mut code).map_err(|e| format!("cannot read the code: {e}"))?;
            let token = client.token_with_code(operation, code.trim()).map_err(|e| e.to_string())?;
            println!("driver: second factor accepted; the token carries the flag: {}", token.second_factor());
            client.sign_request("CONNECT", database, startup_packet)
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    println!(
        "driver: got a token expiring at {} (server clock); refresh due locally at {}",
        signed.access_token().expires_at(),
        signed.access_token().refresh_at()
    );
    // The connection handshake carries the two header values next to the packet.
    let handshake =
        format!("{}\n{}\n{}", signed.authorization(), signed.pop(), String::from_utf8_lossy(startup_packet));
    println!("driver: sending CONNECT {database} with `Authorization: Onetrip <token>` and `Onetrip-PoP: <proof>`");
    let again = client.sign_request("CONNECT", database, startup_packet).map_err(|e| e.to_string())?;
    println!("driver: a second connection reuses the cached token ({} handshake in all)", client.handshakes());
    assert_eq!(again.token(), signed.token());

    // ---- database side (in-process verification) ----
    let verifier = verifier(audience, audience_key)?;
    let mut seen_proofs = HashSet::new();
    let claims = accept(&verifier, &mut seen_proofs, &handshake, database)?;
    println!(
        "database: accepted key {} for audience `{}` with scopes [{}]{}; token expires at {}",
        claims.api_key_id,
        claims.audience(),
        claims.scopes(),
        if claims.second_factor { " (second factor verified)" } else { "" },
        claims.expires_at
    );
    // The proof covers method, path and body: the same handshake for another
    // database is refused, and so is a replay of the accepted one.
    match accept(&verifier, &mut HashSet::new(), &handshake, "billing") {
        Err(e) => println!("database: the same handshake for database `billing` is refused ({e})"),
        Ok(_) => return Err("a proof for another database was accepted".into()),
    }
    match accept(&verifier, &mut seen_proofs, &handshake, database) {
        Err(e) => println!("database: a replay of the handshake is refused ({e})"),
        Ok(_) => return Err("a replayed handshake was accepted".into()),
    }
    Ok(())
}

/// The database's verifier from `<key id hex>:<key hex>`.
fn verifier(audience: &str, audience_key: &str) -> Result<TokenVerifier, String> {
    let (key_id, key) = audience_key.split_once(':').ok_or("ONETRIP_AUDIENCE_KEY must be <key id hex>:<key hex>")?;
    let key_id: [u8; 4] = hex(key_id).and_then(|b| b.try_into().ok()).ok_or("audience key id: 8 hex characters")?;
    let key: [u8; 32] = hex(key).and_then(|b| b.try_into().ok()).ok_or("audience key: 64 hex characters")?;
    TokenVerifier::new(DefaultBackend::default(), audience, &[(key_id, Secret::new(key))]).map_err(|e| e.to_string())
}

/// What the database does with an incoming connection handshake.
fn accept(
    verifier: &TokenVerifier,
    seen_proofs: &mut HashSet<[u8; 16]>,
    handshake: &str,
    database: &str,
) -> Result<onetrip_client::Claims, String> {
    let mut lines = handshake.splitn(3, '\n');
    let (Some(authorization), Some(pop), Some(packet)) = (lines.next(), lines.next(), lines.next()) else {
        return Err("malformed handshake".into());
    };
    let token_b64 = authorization
        .strip_prefix(AUTHORIZATION_SCHEME)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or("expected `Authorization: Onetrip <token>`")?;
    let token = Token::from_base64(token_b64).map_err(|e| e.to_string())?;
    let proof = PopProof::from_header(pop).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = verifier
        .verify_request(token.as_bytes(), &proof, "CONNECT", database, packet.as_bytes(), now, POP_WINDOW_SECS)
        .map_err(|e| e.to_string())?;
    // Proofs are reusable within the window unless the server remembers them.
    if !seen_proofs.insert(proof.replay_id()) {
        return Err("proof already used".into());
    }
    Ok(claims)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
