//! `POST /v1/auth`: one fixed-size request in, one fixed-size response out.
//! Every protocol outcome (including failures) is a 400-byte answer; only bytes that
//! are not a request at all get an error the HTTP layer turns into a 4xx.
//! Order matters: authenticate, then clock window, then replay cache, so nothing
//! before authentication can burn state, and a replay burns nothing twice.

use std::borrow::Cow;
use std::time::Instant;

use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::RESPONSE_LEN;
use onetrip_protocol::token::{Claims, SERVER_AUDIENCE};
use onetrip_protocol::{RequestError, Secret, Status};
use rand::RngCore;

use crate::keys::KeyEntry;
use crate::otp::service::OtpError;
use crate::otp::{self, CheckOutcome};
use crate::state::AppState;

/// Answers one handshake request. `Err` means the body is not a request (HTTP 400).
pub async fn handle_auth(
    state: &AppState,
    body: &[u8],
    now: u64,
    out: &mut [u8; RESPONSE_LEN],
) -> Result<Status, RequestError> {
    let started = Instant::now();
    let result = answer(state, body, now, out).await;
    match &result {
        Ok(status) => {
            state.metrics.record_handshake(*status, started.elapsed().as_nanos() as u64);
            tracing::debug!(status = status.as_str(), "handshake");
        }
        Err(e) => {
            state.metrics.handshakes_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "handshake request rejected");
        }
    }
    result
}

async fn answer(state: &AppState, body: &[u8], now: u64, out: &mut [u8; RESPONSE_LEN]) -> Result<Status, RequestError> {
    let hs = state.handshake.load_full();
    let opened = match hs.responder.open_request(body, now) {
        Ok(opened) => opened,
        Err(RequestError::UnknownServerKey) => {
            hs.responder.server_key_changed(body, now, out)?;
            return Ok(Status::ServerKeyChanged);
        }
        Err(e) => return Err(e),
    };
    let (ss, entry) = state.keys.static_static(&hs.responder, opened.server_key_id(), opened.key_id(), now);
    let auth = match opened.authenticate(&ss) {
        Ok(auth) => auth,
        Err(rejected) => {
            let status = rejected.status();
            rejected.respond(now, &mut rand::thread_rng(), out);
            return Ok(status);
        }
    };
    // authenticate() only succeeds with a real entry's static-static value.
    let Some(entry) = entry else {
        auth.respond(&Reply::AuthFailed, now, &mut rand::thread_rng(), out);
        return Ok(Status::AuthFailed);
    };
    let window = state.settings.clock_window_secs;
    // Strictly after the start second: an earlier run may have accepted any stamp up
    // to its last second without persisting it (crate::replay_guard).
    if !auth.timestamp_acceptable(now, window, state.started_at.saturating_add(1)) {
        auth.respond(&Reply::ClockSkew, now, &mut rand::thread_rng(), out);
        return Ok(Status::ClockSkew);
    }
    // Before the replay cache: one key at full speed gets `rate_limited` and can take
    // neither the others' share of the CPU nor the cache's room.
    if !entry.admit_handshake(now, state.settings.auth_rate_per_key) {
        auth.respond(&Reply::RateLimited { retry_after_secs: 1 }, now, &mut rand::thread_rng(), out);
        return Ok(Status::RateLimited);
    }
    // Durable before any answer for ids stamped ahead of the clock: no restart can
    // accept them again.
    match crate::replay_guard::remember_once(state, auth.replay_id(), auth.timestamp(), now).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(key_id = %entry.id, "replayed handshake refused");
            auth.respond(&Reply::AuthFailed, now, &mut rand::thread_rng(), out);
            return Ok(Status::AuthFailed);
        }
        Err(e) => {
            tracing::warn!(error = %e, "replay cache unavailable; refusing handshake");
            auth.respond(&Reply::ServerError, now, &mut rand::thread_rng(), out);
            return Ok(Status::ServerError);
        }
    }
    let Some((audience, scopes)) =
        resolve_grant(&entry, auth.audience(), auth.scopes(), &state.settings.default_audience)
    else {
        auth.respond(&Reply::ScopeDenied, now, &mut rand::thread_rng(), out);
        return Ok(Status::ScopeDenied);
    };
    let mut second_factor = false;
    let mfa_scopes = &state.settings.otp.mfa_scopes;
    // Checked for emptiness first: splitting the scope string costs a cache miss per
    // handshake with many keys, for nothing when no scope requires MFA.
    let mfa_scope = !mfa_scopes.is_empty() && scopes.split(' ').any(|s| mfa_scopes.iter().any(|m| m == s));
    if entry.record.require_otp || mfa_scope {
        let reply = match auth.second_factor() {
            None => start_step_up(state, &entry, now).await,
            Some((operation, code)) => {
                let code = zeroize::Zeroizing::new(code.to_owned());
                match check_step_up(state, &entry, operation, code, now).await {
                    StepUp::Approved => {
                        second_factor = true;
                        None
                    }
                    StepUp::Reply(reply, status) => Some((reply, status)),
                }
            }
        };
        if let Some((reply, status)) = reply {
            auth.respond(&reply.as_reply(), now, &mut rand::thread_rng(), out);
            return Ok(status);
        }
    }
    let Some(verifier) = state.token_verifier(audience) else {
        auth.respond(&Reply::ScopeDenied, now, &mut rand::thread_rng(), out);
        return Ok(Status::ScopeDenied);
    };
    // A token never outlives its key: one minted during a rotation's grace ends with
    // the grace, not `token_ttl_secs` after it.
    let ttl_end = now + state.settings.token_ttl_secs;
    let expires_at = entry.record.expires_at.map_or(ttl_end, |key_end| key_end.min(ttl_end));
    let (token, session_key) = {
        let mut rng = rand::thread_rng();
        let session_key = Secret::random(&mut rng);
        let mut token_id = [0u8; 16];
        rng.fill_bytes(&mut token_id);
        let claims =
            Claims::new(token_id, entry.id, now, expires_at, second_factor, audience, &scopes, session_key.clone());
        match claims.and_then(|c| verifier.seal(&c, &mut rng)) {
            Ok(token) => (token, session_key),
            Err(e) => {
                tracing::error!(error = %e, key_id = %entry.id, "cannot mint token");
                auth.respond(&Reply::ServerError, now, &mut rand::thread_rng(), out);
                return Ok(Status::ServerError);
            }
        }
    };
    auth.respond(
        &Reply::Granted { token: &token, session_key: &session_key, expires_at },
        now,
        &mut rand::thread_rng(),
        out,
    );
    if entry.should_record_use(now) {
        state.last_used.insert(entry.id, now);
    }
    Ok(Status::Ok)
}

/// A step-up answer, owned so it can outlive the store call that produced it.
enum OwnedReply {
    SecondFactorRequired { operation: [u8; 16], channel: onetrip_protocol::Channel, destination: String },
    SecondFactorFailed { attempts_left: u8 },
    RateLimited { retry_after_secs: u32 },
    ScopeDenied,
    ServerError,
}

impl OwnedReply {
    fn as_reply(&self) -> Reply<'_> {
        match self {
            OwnedReply::SecondFactorRequired { operation, channel, destination } => {
                Reply::SecondFactorRequired { operation: *operation, channel: *channel, destination }
            }
            OwnedReply::SecondFactorFailed { attempts_left } => {
                Reply::SecondFactorFailed { attempts_left: *attempts_left }
            }
            OwnedReply::RateLimited { retry_after_secs } => Reply::RateLimited { retry_after_secs: *retry_after_secs },
            OwnedReply::ScopeDenied => Reply::ScopeDenied,
            OwnedReply::ServerError => Reply::ServerError,
        }
    }
}

fn rate_limited(retry_after: u64) -> (OwnedReply, Status) {
    (OwnedReply::RateLimited { retry_after_secs: u32::try_from(retry_after).unwrap_or(u32::MAX) }, Status::RateLimited)
}

enum StepUp {
    Approved,
    Reply(OwnedReply, Status),
}

/// The channel and destination of a key's `--otp-to`: `console[:label]`, `totp`,
/// `webhook:<recipient>` or an email address.
fn step_up_destination(otp_to: &str) -> (onetrip_protocol::Channel, String) {
    let channel = otp::channel_for(otp_to);
    let to = match channel {
        onetrip_protocol::Channel::Totp => crate::otp::service::STEP_UP_ACCOUNT.to_owned(),
        onetrip_protocol::Channel::Webhook => otp_to.trim_start_matches("webhook:").to_owned(),
        _ => otp_to.to_owned(),
    };
    (channel, to)
}

/// Starts a step-up for `entry`: stores a verification and sends its code. `None`
/// never happens here: every path answers.
async fn start_step_up(state: &AppState, entry: &KeyEntry, now: u64) -> Option<(OwnedReply, Status)> {
    let Some(otp_to) = entry.record.otp_to.as_deref() else {
        // An MFA scope on a key that has no second-factor destination.
        return Some((OwnedReply::ScopeDenied, Status::ScopeDenied));
    };
    let (channel, to) = step_up_destination(otp_to);
    let new = crate::otp::service::NewVerification {
        owner: *entry.id.as_bytes(),
        owner_name: entry.record.name.clone(),
        purpose: otp::Purpose::StepUp,
        channel,
        to: to.clone(),
        policy: otp::Policy::default(),
        locale: None,
    };
    Some(match crate::otp::service::start_step_up(state, new, now).await {
        Ok((v, _)) => (
            OwnedReply::SecondFactorRequired {
                operation: v.id,
                channel,
                destination: if channel == onetrip_protocol::Channel::Totp {
                    "authenticator app".to_owned()
                } else {
                    otp::mask_destination(&to)
                },
            },
            Status::SecondFactorRequired,
        ),
        Err(OtpError::SendLimited { retry_after, .. } | OtpError::Locked { retry_after }) => rate_limited(retry_after),
        Err(e) => {
            tracing::error!(key_id = %entry.id, channel = channel.as_str(), error = %e, "cannot start a step-up");
            (OwnedReply::ServerError, Status::ServerError)
        }
    })
}

/// Checks a step-up code (atomically, in the store).
async fn check_step_up(
    state: &AppState,
    entry: &KeyEntry,
    operation: [u8; 16],
    code: zeroize::Zeroizing<String>,
    now: u64,
) -> StepUp {
    let owner = *entry.id.as_bytes();
    let failed = |attempts_left: u32| {
        StepUp::Reply(
            OwnedReply::SecondFactorFailed { attempts_left: u8::try_from(attempts_left).unwrap_or(u8::MAX) },
            Status::SecondFactorFailed,
        )
    };
    match crate::otp::service::check(state, owner, otp::Purpose::StepUp, operation, code, now).await {
        Ok((CheckOutcome::Approved, _)) => StepUp::Approved,
        Ok((CheckOutcome::Wrong { attempts_left }, _)) => failed(attempts_left),
        Ok((CheckOutcome::NotPending(_), _)) | Err(OtpError::NotFound) => failed(0),
        Err(OtpError::Locked { retry_after }) => {
            let (reply, status) = rate_limited(retry_after);
            StepUp::Reply(reply, status)
        }
        Err(e) => {
            tracing::error!(key_id = %entry.id, error = %e, "cannot check a second-factor code");
            StepUp::Reply(OwnedReply::ServerError, Status::ServerError)
        }
    }
}

/// The audience and scopes to grant, or `None` when the key may not have them.
/// Empty requests mean "the key's first audience (or the server default)" and "all
/// of the key's scopes for that audience". Every key may ask for the server's own
/// audience, which carries only server scopes (PROTOCOL.md §6.3).
fn resolve_grant<'a>(
    entry: &'a KeyEntry,
    audience: &'a str,
    scopes: &'a str,
    default_audience: &'a str,
) -> Option<(&'a str, Cow<'a, str>)> {
    let allowed_audiences = &entry.record.audiences;
    let audience = match (audience.is_empty(), allowed_audiences.first()) {
        (true, Some(first)) => first.as_str(),
        (true, None) => default_audience,
        (false, _) if audience == SERVER_AUDIENCE => audience,
        (false, _) if allowed_audiences.iter().any(|a| a == audience) => audience,
        (false, None) if audience == default_audience => audience,
        _ => return None,
    };
    if scopes.is_empty() {
        return Some((audience, entry.grants.for_audience(audience)));
    }
    let all_known = scopes.split(' ').all(|s| entry.grants.allows(audience, s));
    all_known.then_some((audience, Cow::Borrowed(scopes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ApiKeyRecord;
    use onetrip_protocol::api_key::KeyId;

    fn entry(scopes: &[&str], audiences: &[&str]) -> KeyEntry {
        let record = ApiKeyRecord {
            name: "t".into(),
            verifier: hex::encode([9u8; 32]),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            require_otp: false,
            otp_to: None,
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            expires_at: None,
            replaced_by: None,
        };
        KeyEntry::new(KeyId::from_bytes([1; 16]), record).unwrap()
    }

    #[test]
    fn grants_only_what_the_key_holds() {
        let e = entry(&["db:read", "db:write"], &["db", "cache"]);
        let grant = |a, s| resolve_grant(&e, a, s, "onetrip").map(|(a, s)| (a, s.into_owned()));
        assert_eq!(grant("", ""), Some(("db", "db:read db:write".into())));
        assert_eq!(grant("cache", "db:read"), Some(("cache", "db:read".into())));
        assert_eq!(grant("billing", ""), None);
        assert_eq!(grant("db", "admin"), None);
        assert_eq!(grant("db", "db:read  db:write"), None, "empty scope token");
        let plain = entry(&[], &[]);
        assert_eq!(resolve_grant(&plain, "", "", "app").map(|(a, s)| (a, s.into_owned())), Some(("app", "".into())));
        assert_eq!(resolve_grant(&plain, "app", "", "app").map(|(a, s)| (a, s.into_owned())), Some(("app", "".into())));
    }

    #[test]
    fn scopes_are_granted_per_audience() {
        let e = entry(&["db:read", "otp", "introspect", "admin@cache", "whoami@onetrip"], &["db", "cache"]);
        let grant = |a, s| resolve_grant(&e, a, s, "onetrip").map(|(a, s)| (a, s.into_owned()));
        // Server scopes never reach a resource audience, asked for or not.
        assert_eq!(grant("db", ""), Some(("db", "db:read".into())));
        assert_eq!(grant("db", "otp"), None);
        assert_eq!(grant("cache", "introspect"), None);
        // Qualified scopes go to their audience only, without the qualifier.
        assert_eq!(grant("cache", ""), Some(("cache", "db:read admin".into())));
        assert_eq!(grant("db", "admin"), None);
        assert_eq!(grant("cache", "admin@cache"), None, "the qualified spelling is not a scope name");
        // The server's own audience is open to every key, with server scopes only.
        assert_eq!(grant("onetrip", ""), Some(("onetrip", "otp introspect whoami".into())));
        assert_eq!(grant("onetrip", "otp"), Some(("onetrip", "otp".into())));
        assert_eq!(grant("onetrip", "db:read"), None);
        let plain = entry(&["otp"], &[]);
        assert_eq!(
            resolve_grant(&plain, "", "", "onetrip").map(|(a, s)| (a, s.into_owned())),
            Some(("onetrip", "otp".into()))
        );
    }
}
