//! Prints onetrip database login credentials, one a line, for the PostgreSQL test
//! (`bindings/pam/tests/test_pg_login.py`) and for trying the module by hand:
//!
//! ```text
//! ONETRIP_SERVER=http://127.0.0.1:7420 ONETRIP_PIN=SHA256:… ONETRIP_API_KEY=otk_… \
//! ONETRIP_AUDIENCE=db cargo run -p onetrip-pam --example login_credential -- app_reader [--database D] [--count N] [--shift-secs S]
//! ```
//!
//! `--shift-secs` stamps the credentials that many seconds off server time (a test of
//! the clock window). Exit 3: the server refused the API key (unknown, revoked).

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use onetrip_client::{BlockingClient, Client, Error};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

fn run() -> Result<Vec<String>, Result<Error, String>> {
    let mut args = std::env::args().skip(1);
    let user =
        args.next().ok_or(Err("usage: login_credential USER [--database D] [--count N] [--shift-secs S]".into()))?;
    let (mut database, mut count, mut shift) = (None, 1usize, 0i64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(Err(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--database" => database = Some(value),
            "--count" => count = value.parse().map_err(|_| Err("--count: a number".to_string()))?,
            "--shift-secs" => shift = value.parse().map_err(|_| Err("--shift-secs: a number".to_string()))?,
            other => return Err(Err(format!("unknown flag {other}"))),
        }
    }
    let pin = env("ONETRIP_PIN").map_err(Err)?.parse().map_err(|_| Err("ONETRIP_PIN: a fingerprint".to_string()))?;
    let builder = Client::builder()
        .server(env("ONETRIP_SERVER").map_err(Err)?)
        .api_key(env("ONETRIP_API_KEY").map_err(Err)?)
        .pin(pin)
        .audience(env("ONETRIP_AUDIENCE").map_err(Err)?);
    let client = BlockingClient::build(builder).map_err(Ok)?;
    if count == 1 && shift == 0 {
        // The public entry point a driver uses.
        return Ok(vec![client.login_credential(&user, database.as_deref()).map_err(Ok)?.as_str().to_owned()]);
    }
    let token = client.token().map_err(Ok)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (0..count)
        .map(|_| {
            let at = now.saturating_add_signed(shift);
            token.login_credential(&user, database.as_deref(), at).map(|c| c.as_str().to_owned()).map_err(Ok)
        })
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(Ok(e @ Error::AuthFailed)) => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
        Err(Ok(e)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(Err(usage)) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}
