//! `POST /v1/auth`: one fixed-size request in, one fixed-size response out.
//! Every protocol outcome (including failures) is a 400-byte answer; only bytes that
//! are not a request at all get an error the HTTP layer turns into a 4xx.
//! Order matters: authenticate, then clock window, then replay cache, so nothing
//! before authentication can burn state, and a replay burns nothing twice.

use std::time::Instant;

use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::RESPONSE_LEN;
use onetrip_protocol::token::Claims;
use onetrip_protocol::{RequestError, Secret, Status};
use rand::RngCore;

use crate::keys::KeyEntry;
use crate::otp::{self, CheckOutcome};
use crate::shared::SharedState;
use crate::state::AppState;

/// Answers one handshake request. `Err` means the body is not a request (HTTP 400).
pub async fn handle_auth<S: SharedState>(
    state: &AppState<S>,
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

async fn answer<S: SharedState>(
    state: &AppState<S>,
    body: &[u8],
    now: u64,
    out: &mut [u8; RESPONSE_LEN],
) -> Result<Status, RequestError> {
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
    if !auth.timestamp_acceptable(now, window, state.started_at) {
        auth.respond(&Reply::ClockSkew, now, &mut rand::thread_rng(), out);
        return Ok(Status::ClockSkew);
    }
    // Kept for twice the window: a request is only acceptable within ±window of its stamp.
    match state.shared.remember_once(auth.replay_id(), now, auth.timestamp() + 2 * window).await {
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
    if entry.record.require_otp {
        match auth.second_factor() {
            None => {
                // Each step-up sends a code: at most 5 per key per 10 minutes.
                let bucket = format!("otp-send:{}", entry.id);
                match state.shared.rate_limit(&bucket, 5, 600, now).await {
                    Ok(crate::shared::RateDecision::Allowed) => {}
                    Ok(crate::shared::RateDecision::Limited { retry_after }) => {
                        let retry_after_secs = u32::try_from(retry_after).unwrap_or(u32::MAX);
                        auth.respond(&Reply::RateLimited { retry_after_secs }, now, &mut rand::thread_rng(), out);
                        return Ok(Status::RateLimited);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "send limit unavailable; refusing step-up");
                        auth.respond(&Reply::ServerError, now, &mut rand::thread_rng(), out);
                        return Ok(Status::ServerError);
                    }
                }
                let reply = start_step_up(state, &entry, now).await;
                let status = reply.as_ref().map_or(Status::ServerError, |_| Status::SecondFactorRequired);
                match reply {
                    Some((operation, channel, destination)) => auth.respond(
                        &Reply::SecondFactorRequired { operation, channel, destination: &destination },
                        now,
                        &mut rand::thread_rng(),
                        out,
                    ),
                    None => auth.respond(&Reply::ServerError, now, &mut rand::thread_rng(), out),
                }
                return Ok(status);
            }
            Some((operation, code)) => {
                let code = zeroize::Zeroizing::new(code.to_owned());
                match check_step_up(state, &entry, operation, code, now).await {
                    Some(CheckOutcome::Approved) => second_factor = true,
                    Some(CheckOutcome::Wrong { attempts_left }) => {
                        let attempts_left = u8::try_from(attempts_left).unwrap_or(u8::MAX);
                        auth.respond(&Reply::SecondFactorFailed { attempts_left }, now, &mut rand::thread_rng(), out);
                        return Ok(Status::SecondFactorFailed);
                    }
                    Some(CheckOutcome::NotPending(_)) => {
                        auth.respond(
                            &Reply::SecondFactorFailed { attempts_left: 0 },
                            now,
                            &mut rand::thread_rng(),
                            out,
                        );
                        return Ok(Status::SecondFactorFailed);
                    }
                    None => {
                        auth.respond(&Reply::ServerError, now, &mut rand::thread_rng(), out);
                        return Ok(Status::ServerError);
                    }
                }
            }
        }
    }
    let Some(verifier) = state.token_verifier(audience) else {
        auth.respond(&Reply::ScopeDenied, now, &mut rand::thread_rng(), out);
        return Ok(Status::ScopeDenied);
    };
    let expires_at = now + state.settings.token_ttl_secs;
    let (token, session_key) = {
        let mut rng = rand::thread_rng();
        let session_key = Secret::random(&mut rng);
        let mut token_id = [0u8; 16];
        rng.fill_bytes(&mut token_id);
        let claims =
            Claims::new(token_id, entry.id, now, expires_at, second_factor, audience, scopes, session_key.clone());
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
    state.last_used.insert(entry.id, now);
    Ok(Status::Ok)
}

/// Creates and delivers a step-up verification for `entry`. `None` when the channel
/// is not available or the store fails (the handshake then answers `server_error`).
async fn start_step_up<S: SharedState>(
    state: &AppState<S>,
    entry: &KeyEntry,
    now: u64,
) -> Option<([u8; 16], onetrip_protocol::Channel, String)> {
    let destination = entry.record.otp_to.clone()?;
    let channel = otp::channel_for(&destination);
    if channel != onetrip_protocol::Channel::Console {
        tracing::warn!(key_id = %entry.id, channel = channel.as_str(), "second-factor channel not available in this build");
        return None;
    }
    let st = state.clone();
    let owner = *entry.id.as_bytes();
    let to = destination.clone();
    let created = tokio::task::spawn_blocking(move || {
        let key = st.store.otp_key()?;
        let (v, code) = otp::Verification::create(
            &mut rand::thread_rng(),
            key.expose(),
            owner,
            channel.as_str(),
            &to,
            otp::Policy::default(),
            now,
        )
        .map_err(|e| crate::store::StoreError::Record(e.to_string()))?;
        // Stored before the code goes out: a crash cannot leave a code without its counter.
        st.store.put_verification(&v)?;
        st.store.audit(
            now,
            "otp.generate",
            serde_json::json!({ "key_id": hex::encode(owner), "operation": hex::encode(v.id), "channel": channel.as_str(), "kind": "step_up" }),
        )?;
        Ok::<_, crate::store::StoreError>((v.id, code))
    })
    .await;
    let (id, code) = match created {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store a second-factor verification");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "second-factor task failed");
            return None;
        }
    };
    deliver_console(state, &destination, &id, &code);
    Some((id, channel, otp::mask_destination(&destination)))
}

/// The development console channel: says a code was sent; prints it only with
/// `--otp-console-codes`.
fn deliver_console<S>(state: &AppState<S>, destination: &str, id: &[u8; 16], code: &str) {
    if state.settings.otp_console_codes {
        eprintln!("[onetrip console channel] code for {destination} (operation {}): {code}", hex::encode(id));
    } else {
        tracing::info!(destination, operation = %hex::encode(id), "console channel: code sent (start with --otp-console-codes to see it)");
    }
}

/// Checks a step-up code atomically in the store. `None` on a store failure.
async fn check_step_up<S: SharedState>(
    state: &AppState<S>,
    entry: &KeyEntry,
    operation: [u8; 16],
    code: zeroize::Zeroizing<String>,
    now: u64,
) -> Option<CheckOutcome> {
    let st = state.clone();
    let owner = *entry.id.as_bytes();
    let result = tokio::task::spawn_blocking(move || {
        let key = st.store.otp_key()?;
        let outcome = st.store.update_verification(&operation, |v| {
            // Another key's operation id is treated like an unknown one.
            (v.owner == owner).then(|| v.check(key.expose(), &code, now))
        })?;
        let result = match outcome {
            Some(Some(CheckOutcome::Approved)) => "approved".to_owned(),
            Some(Some(CheckOutcome::Wrong { .. })) => "wrong_code".to_owned(),
            Some(Some(CheckOutcome::NotPending(s))) => format!("refused_{}", s.as_str()),
            Some(None) => "refused_other_key".to_owned(),
            None => "refused_unknown_operation".to_owned(),
        };
        st.store.audit(
            now,
            "otp.check",
            serde_json::json!({ "key_id": hex::encode(owner), "operation": hex::encode(operation), "outcome": result, "kind": "step_up" }),
        )?;
        let outcome = outcome.map(|o| o.unwrap_or(CheckOutcome::NotPending(otp::Status::Canceled)));
        Ok::<_, crate::store::StoreError>(outcome)
    })
    .await;
    match result {
        Ok(Ok(Some(outcome))) => Some(outcome),
        Ok(Ok(None)) => Some(CheckOutcome::NotPending(otp::Status::Expired)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot check a second-factor code");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "second-factor task failed");
            None
        }
    }
}

/// The audience and scopes to grant, or `None` when the key may not have them.
/// Empty requests mean "the key's first audience (or the server default)" and "all
/// of the key's scopes".
fn resolve_grant<'a>(
    entry: &'a KeyEntry,
    audience: &'a str,
    scopes: &'a str,
    default_audience: &'a str,
) -> Option<(&'a str, &'a str)> {
    let allowed_audiences = &entry.record.audiences;
    let audience = match (audience.is_empty(), allowed_audiences.first()) {
        (true, Some(first)) => first.as_str(),
        (true, None) => default_audience,
        (false, _) if allowed_audiences.iter().any(|a| a == audience) => audience,
        (false, None) if audience == default_audience => audience,
        _ => return None,
    };
    if scopes.is_empty() {
        return Some((audience, &entry.all_scopes));
    }
    let all_known = scopes.split(' ').all(|s| !s.is_empty() && entry.record.scopes.iter().any(|k| k == s));
    all_known.then_some((audience, scopes))
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
        assert_eq!(resolve_grant(&e, "", "", "onetrip"), Some(("db", "db:read db:write")));
        assert_eq!(resolve_grant(&e, "cache", "db:read", "onetrip"), Some(("cache", "db:read")));
        assert_eq!(resolve_grant(&e, "billing", "", "onetrip"), None);
        assert_eq!(resolve_grant(&e, "onetrip", "", "onetrip"), None, "keys with audiences do not get the default");
        assert_eq!(resolve_grant(&e, "db", "admin", "onetrip"), None);
        assert_eq!(resolve_grant(&e, "db", "db:read  db:write", "onetrip"), None, "empty scope token");
        let plain = entry(&[], &[]);
        assert_eq!(resolve_grant(&plain, "", "", "onetrip"), Some(("onetrip", "")));
        assert_eq!(resolve_grant(&plain, "onetrip", "", "onetrip"), Some(("onetrip", "")));
    }
}
