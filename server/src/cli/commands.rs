//! The admin commands: `keys …` (with the streamed listing), `token`, `server-key …`.

use super::args::{Cli, KeysCommand, ServerKeyCommand, TokenArgs};
use super::bulk::{self, Batch};
use super::output::{decode, key_line, print_answer, print_line, Stdout};
use super::store_access::{admin_call, admin_target};
use super::CliError;
use crate::admin::answers::{
    KeyCreated, KeyPage, KeyRotated, KeyShown, KeyTotpEnrolled, KeyUnlocked, SecondFactorLock, ServerKeyRotated,
    ServerKeys,
};
use crate::admin::{self, AdminError, AdminRequest};

pub(super) async fn keys(cli: &Cli, cmd: &KeysCommand) -> Result<(), CliError> {
    let (req, json) = match cmd {
        KeysCommand::Create {
            name,
            scopes,
            audiences,
            require_otp,
            otp_to,
            count: Some(count),
            out: Some(out),
            json,
        } => {
            let batch = Batch {
                name: name.clone(),
                scopes: scopes.clone(),
                audiences: audiences.clone(),
                require_otp: *require_otp,
                otp_to: otp_to.clone(),
            };
            return bulk::create_many(cli, batch, *count, out, *json).await;
        }
        KeysCommand::Revoke { from: Some(from), json, .. } => return bulk::revoke_from(cli, from, *json).await,
        KeysCommand::Create { name, scopes, audiences, require_otp, otp_to, json, .. } => (
            AdminRequest::KeysCreate {
                name: name.clone(),
                scopes: scopes.clone(),
                audiences: audiences.clone(),
                require_otp: *require_otp,
                otp_to: otp_to.clone(),
            },
            *json,
        ),
        KeysCommand::List { limit, after, name, audience, scope, revoked, created_after, json } => {
            let filter = ListFilter {
                name: name.clone(),
                audience: audience.clone(),
                scope: scope.clone(),
                revoked: *revoked,
                created_after: *created_after,
            };
            return list_keys(cli, *limit, after.clone(), filter, *json).await;
        }
        KeysCommand::TotpEnroll { id, replace, json } => {
            (AdminRequest::KeysTotpEnroll { id: id.clone(), replace: *replace }, *json)
        }
        KeysCommand::Show { id, json } => (AdminRequest::KeysShow { id: id.clone() }, *json),
        KeysCommand::Revoke { id, json, .. } => {
            (AdminRequest::KeysRevoke { id: id.clone().unwrap_or_default() }, *json)
        }
        KeysCommand::Unlock { id, json } => (AdminRequest::KeysUnlock { id: id.clone() }, *json),
        KeysCommand::Rotate { id, grace_secs, json } => {
            (AdminRequest::KeysRotate { id: id.clone(), grace_secs: *grace_secs }, *json)
        }
    };
    let v = admin_call(cli, req).await?;
    match cmd {
        KeysCommand::Create { .. } => print_answer(&v, json, |a: &KeyCreated| new_key(a, None)),
        KeysCommand::Rotate { .. } => {
            print_answer(&v, json, |a: &KeyRotated| new_key(&a.new, Some(a.old_key_expires_at)))
        }
        KeysCommand::TotpEnroll { .. } => print_answer(&v, json, |a: &KeyTotpEnrolled| {
            let uri = &a.enrolment.otpauth_uri;
            format!(
                "Scan this with an authenticator app (or enter the secret by hand):\n\n{}\n  secret: {}\n  uri:    {uri}\n\nThis is the only time the secret is shown. Codes: {} digits, {} s, {}.",
                crate::otp::totp::qr_terminal(uri),
                a.enrolment.secret,
                a.enrolment.digits,
                a.enrolment.period,
                algorithm_name(&a.enrolment.algorithm),
            )
        }),
        KeysCommand::Show { .. } => {
            print_answer(&v, json, |a: &KeyShown| lock_lines(&key_line(&a.key), &a.second_factor_lock))
        }
        KeysCommand::Unlock { .. } => {
            print_answer(&v, json, |a: &KeyUnlocked| lock_lines(&a.id, &a.second_factor_lock))
        }
        KeysCommand::Revoke { .. } | KeysCommand::List { .. } => print_answer(&v, json, key_line),
    }
}

/// What `keys create` and `keys rotate` print: the key, once.
fn new_key(a: &KeyCreated, old_key_expires_at: Option<u64>) -> String {
    format!(
        "{}\n\n  {}\n\nThis is the only time the API key is shown: store it in your secret manager.{}",
        key_line(&a.key),
        a.api_key.expose(),
        old_key_expires_at.map(|t| format!("\nThe old key stays valid until {t} (unix time).")).unwrap_or_default()
    )
}

/// `SHA1` as people write it: `SHA-1`.
fn algorithm_name(a: &str) -> String {
    match a.strip_prefix("SHA") {
        Some(bits) => format!("SHA-{bits}"),
        None => a.to_owned(),
    }
}

/// A key's line and its second-factor lockout.
fn lock_lines(line: &str, lock: &SecondFactorLock) -> String {
    let state = match lock.locked_until {
        Some(until) => format!("LOCKED until {until} (unix time): `onetrip keys unlock` clears it"),
        None => "not locked".to_owned(),
    };
    format!(
        "{line}\n  second factor: {state}; wrong codes in the last hour: {}; locks since the last right code: {}",
        lock.wrong_codes_last_hour, lock.lockouts
    )
}

/// The filters of `keys list`.
struct ListFilter {
    name: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
    revoked: Option<bool>,
    created_after: Option<u64>,
}

/// Prints keys a page at a time as they arrive: memory stays one page, here and in
/// the server, whatever the number of keys.
async fn list_keys(
    cli: &Cli,
    limit: Option<usize>,
    mut after: Option<String>,
    filter: ListFilter,
    json: bool,
) -> Result<(), CliError> {
    let target = admin_target(cli).await?;
    let mut left = limit.unwrap_or(usize::MAX);
    let mut out = Stdout::new();
    let mut first = true;
    if json {
        write!(out, "[")?;
    }
    // A reader that went away (`| head`) wants no more pages.
    while left > 0 && !out.gone() {
        let req = AdminRequest::KeysList {
            after: after.take(),
            limit: left.min(admin::MAX_KEYS_PAGE),
            name: filter.name.clone(),
            audience: filter.audience.clone(),
            scope: filter.scope.clone(),
            revoked: filter.revoked,
            created_after: filter.created_after,
        };
        let page: KeyPage = decode(&target.call(req).await?)?;
        for key in &page.keys {
            if json {
                let sep = if first { "\n" } else { ",\n" };
                // Through a `Value`, as each page came: keys in alphabetical order.
                let key = serde_json::to_value(key).map_err(AdminError::Answer)?;
                write!(out, "{sep}{key}")?;
            } else {
                writeln!(out, "{}", key_line(key))?;
            }
            first = false;
        }
        left = left.saturating_sub(page.keys.len());
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
    }
    Ok(out.finish()?)
}

pub(super) async fn token(args: &TokenArgs) -> Result<(), CliError> {
    use onetrip_client::{Client, Error};
    let api_key = match &args.api_key_file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => std::env::var("ONETRIP_API_KEY")
            .map_err(|_| "set ONETRIP_API_KEY (or --api-key-file) to the API key".to_owned())?,
    };
    let api_key = zeroize::Zeroizing::new(api_key.trim().to_owned());
    let mut builder = Client::builder().server(&args.server).api_key(api_key.as_str()).scopes(args.scopes.clone());
    builder = match (&args.pin, &args.trust_file) {
        (Some(pin), _) => builder.pin(pin.parse().map_err(|e| format!("--pin: {e}"))?),
        (None, Some(file)) => builder.trust_on_first_use(file),
        (None, None) => {
            return Err(String::from("pass --pin <fingerprint> (see `onetrip server-key show`) or --trust-file").into())
        }
    };
    if let Some(a) = &args.audience {
        builder = builder.audience(a);
    }
    if let Some(ca) = &args.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        builder = builder.ca_certificates_pem(&pem);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let token = match client.token().await {
        Err(Error::SecondFactorRequired { operation, channel, destination }) => {
            eprint!("second factor: enter the code sent by {} to {destination}: ", channel.as_str());
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the code: {e}"))?;
            client.token_with_code(operation, line.trim()).await
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    if args.json {
        let v = serde_json::json!({
            "token": &*token.token().to_base64(),
            "expires_at": token.expires_at(),
            "second_factor": token.second_factor(),
        });
        print_line(&v.to_string())
    } else {
        print_line(&token.token().to_base64())
    }
}

pub(super) async fn server_key(cli: &Cli, cmd: &ServerKeyCommand) -> Result<(), CliError> {
    let (req, json) = match cmd {
        ServerKeyCommand::Show { json } => (AdminRequest::ServerKeyShow, *json),
        ServerKeyCommand::Rotate { overlap_secs, json } => {
            (AdminRequest::ServerKeyRotate { overlap_secs: *overlap_secs }, *json)
        }
    };
    let v = admin_call(cli, req).await?;
    let human = |k: &ServerKeys| {
        let mut s = format!("identity fingerprint: {}\nprivate keys sealed: {}\n", k.fingerprint, k.sealed);
        for k in &k.keys {
            s += &format!(
                "handshake key {}  valid {}..{}{}\n",
                k.key_id,
                k.not_before,
                k.not_after,
                if k.valid_now { "" } else { " (not valid now)" }
            );
        }
        s.trim_end().to_owned()
    };
    match cmd {
        ServerKeyCommand::Show { .. } => print_answer(&v, json, human),
        ServerKeyCommand::Rotate { .. } => print_answer(&v, json, |a: &ServerKeyRotated| human(&a.keys)),
    }
}
