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
            rejected.respond(now, out);
            return Ok(status);
        }
    };
    // authenticate() only succeeds with a real entry's static-static value.
    let Some(entry) = entry else {
        auth.respond(&Reply::AuthFailed, now, out);
        return Ok(Status::AuthFailed);
    };
    let window = state.settings.clock_window_secs;
    if !auth.timestamp_acceptable(now, window, state.started_at) {
        auth.respond(&Reply::ClockSkew, now, out);
        return Ok(Status::ClockSkew);
    }
    // Kept for twice the window: a request is only acceptable within ±window of its stamp.
    match state.shared.remember_once(auth.replay_id(), now, auth.timestamp() + 2 * window).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(key_id = %entry.id, "replayed handshake refused");
            auth.respond(&Reply::AuthFailed, now, out);
            return Ok(Status::AuthFailed);
        }
        Err(e) => {
            tracing::warn!(error = %e, "replay cache unavailable; refusing handshake");
            auth.respond(&Reply::ServerError, now, out);
            return Ok(Status::ServerError);
        }
    }
    let Some((audience, scopes)) =
        resolve_grant(&entry, auth.audience(), auth.scopes(), &state.settings.default_audience)
    else {
        auth.respond(&Reply::ScopeDenied, now, out);
        return Ok(Status::ScopeDenied);
    };
    if entry.record.require_otp {
        // Step-up delivery is not configured in this build: refuse rather than grant
        // a token without the second factor the key demands.
        tracing::warn!(key_id = %entry.id, "key requires a second factor, which is not available; refusing");
        auth.respond(&Reply::ScopeDenied, now, out);
        return Ok(Status::ScopeDenied);
    }
    let Some(verifier) = state.token_verifier(audience) else {
        auth.respond(&Reply::ScopeDenied, now, out);
        return Ok(Status::ScopeDenied);
    };
    let expires_at = now + state.settings.token_ttl_secs;
    let (token, session_key) = {
        let mut rng = rand::thread_rng();
        let session_key = Secret::random(&mut rng);
        let mut token_id = [0u8; 16];
        rng.fill_bytes(&mut token_id);
        let claims = Claims::new(token_id, entry.id, now, expires_at, false, audience, scopes, session_key.clone());
        match claims.and_then(|c| verifier.seal(&c, &mut rng)) {
            Ok(token) => (token, session_key),
            Err(e) => {
                tracing::error!(error = %e, key_id = %entry.id, "cannot mint token");
                auth.respond(&Reply::ServerError, now, out);
                return Ok(Status::ServerError);
            }
        }
    };
    auth.respond(&Reply::Granted { token: &token, session_key: &session_key, expires_at }, now, out);
    state.last_used.insert(entry.id, now);
    Ok(Status::Ok)
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
