//! The admin operations: [`execute`] runs one [`AdminRequest`] against the store,
//! tells a running server about the change, and answers with the JSON of the
//! operation's type in [`answers`](super::answers).

use onetrip_protocol::api_key::{ApiKey, KeyId};
use onetrip_protocol::{DefaultBackend, IdentityKey};
use serde::Serialize;

use super::answers::{
    AudienceKey, AudienceKeys, HandshakeKey, KeyCreated, KeyPage, KeyRotated, KeyShown, KeySummary, KeyTotpEnrolled,
    KeyUnlocked, Pong, SecondFactorLock, ServerKeyRotated, ServerKeys, TokenKeyRotated, TokenRevoked,
};
use super::{Actor, AdminError, AdminRequest, Live, MAX_KEYS_PAGE};
use crate::otp::lockout::{step_up_subject, Guard};
use crate::otp::totp::{TotpEnrolmentAnswer, TotpParams};
use crate::state::unix_now;
use crate::store::ports::{KeyFilter, KeyRotation};
use crate::store::{ApiKeyRecord, StateStore, StoreError};

/// Runs one admin operation against `store`, telling `live` (a running server) about
/// changes. The answer is the JSON object of the operation's answer type.
pub async fn execute(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    req: AdminRequest,
    actor: &Actor,
) -> Result<serde_json::Value, AdminError> {
    // A running server's own clock (tests move it); the system's for the CLI alone.
    let now = live.map_or_else(unix_now, |l| l.now());
    match req {
        AdminRequest::KeysCreate { name, scopes, audiences, require_otp, otp_to } => {
            let spec = NewKeySpec::checked(name, scopes, audiences, require_otp, otp_to)?;
            answer(create_key(store, live, spec, now, actor).await?)
        }
        AdminRequest::KeysCreateMany { name, scopes, audiences, require_otp, otp_to, count } => {
            let spec = NewKeySpec::checked(name, scopes, audiences, require_otp, otp_to)?;
            answer(super::bulk::create_many(store, live, spec, count, now, actor).await?)
        }
        AdminRequest::KeysRevokeMany { ids } => answer(super::bulk::revoke_many(store, live, &ids, now, actor).await?),
        AdminRequest::KeysList { after, limit, name, audience, scope, revoked, created_after } => {
            let after = after.as_deref().map(key_id).transpose()?;
            let limit = limit.clamp(1, MAX_KEYS_PAGE);
            let filter = KeyFilter { name, audience, scope, revoked, created_after };
            let page = store.api_keys_page(after, limit, &filter).await?;
            // A full page may have a successor; a short one is the last.
            let next_after = (page.len() == limit).then(|| page.last().map(|(id, _)| id.to_string())).flatten();
            let keys = page.iter().map(|(id, r)| KeySummary::new(id, r, now)).collect();
            answer(KeyPage { keys, next_after })
        }
        AdminRequest::KeysShow { id } => {
            let id = key_id(&id)?;
            let r = existing_key(store, id).await?;
            let guard = store.get_guard(step_up_subject(id.as_bytes())).await?;
            answer(KeyShown {
                key: KeySummary::new(&id, &r, now),
                second_factor_lock: SecondFactorLock::new(&guard, now),
            })
        }
        AdminRequest::KeysUnlock { id } => {
            let id = key_id(&id)?;
            existing_key(store, id).await?;
            let actor = actor.clone();
            let unlock = Box::new(move |g: &mut Guard| {
                let was = SecondFactorLock::new(g, now);
                g.unlock();
                Some(actor.event(
                    now,
                    "otp.unlocked",
                    serde_json::json!({ "key_id": id.to_string(), "before": was, "by": "admin" }),
                ))
            });
            let guard = store.update_guard(step_up_subject(id.as_bytes()), unlock).await?;
            answer(KeyUnlocked { id: id.to_string(), second_factor_lock: SecondFactorLock::new(&guard, now) })
        }
        AdminRequest::KeysRevoke { id } => {
            let id = key_id(&id)?;
            let revoke = Box::new(move |_: &KeyId, r: &mut ApiKeyRecord| {
                let fresh = r.revoked_at.is_none();
                r.revoked_at.get_or_insert(now);
                fresh
            });
            let audit = actor.event(now, "key.revoked", serde_json::json!({ "id": id.to_string() }));
            store.update_api_keys(vec![id], revoke, Some(audit)).await?;
            let r = existing_key(store, id).await?;
            if let Some(live) = live {
                live.key_changed(id, &r).await;
            }
            answer(KeySummary::new(&id, &r, now))
        }
        AdminRequest::KeysRotate { id, grace_secs } => {
            answer(rotate_key(store, live, &id, grace_secs, now, actor).await?)
        }
        AdminRequest::KeysTotpEnroll { id, replace } => answer(enroll_totp(store, &id, replace, now).await?),
        AdminRequest::Ping => answer(Pong::Pong),
        AdminRequest::ServerKeyShow => answer(server_keys(store, now).await?),
        AdminRequest::ServerKeyRotate { overlap_secs } => {
            let lifetime =
                live.map_or(crate::store::DEFAULT_SERVER_KEY_LIFETIME_SECS, |l| l.server_key_lifetime_secs());
            let new_id = store.rotate_server_key(now, now + overlap_secs, lifetime, actor.json()).await?;
            if let Some(live) = live {
                live.server_keys_changed().await?;
            }
            answer(ServerKeyRotated { keys: server_keys(store, now).await?, new_key_id: hex::encode(new_id) })
        }
        AdminRequest::TokenKeyRotate { overlap_secs } => {
            let new = store.rotate_token_key(now, overlap_secs, actor.json()).await?;
            if let Some(live) = live {
                live.token_keys_changed().await?;
            }
            let key_ids = store.server_secrets().await?.token_keys.iter().map(|(id, _)| hex::encode(id)).collect();
            answer(TokenKeyRotated { new_key_id: hex::encode(new), key_ids, older_keys_retire_at: now + overlap_secs })
        }
        AdminRequest::TokensRevoke { token_id } => answer(revoke_token(store, live, &token_id, now, actor).await?),
        AdminRequest::StoreBackup { path, force } => {
            if !path.is_absolute() {
                return Err(AdminError::Invalid(format!("the backup path {} must be absolute", path.display())));
            }
            let report = store.backup_to(path.clone(), force).await.map_err(|e| {
                use crate::store::backup::BackupError;
                match e {
                    BackupError::Exists(_) | BackupError::WouldReplaceStore(_) => AdminError::Conflict(e.to_string()),
                    BackupError::Source(e) => AdminError::Store(e),
                    BackupError::Unsupported(_) | BackupError::NotAFile(_) | BackupError::Destination { .. } => {
                        AdminError::Invalid(e.to_string())
                    }
                    other => AdminError::Failed(other.to_string()),
                }
            })?;
            // A backup is a copy of the identity and the sealed keys: record who has one.
            let detail = serde_json::json!({ "path": path.display().to_string(), "api_keys": report.api_keys });
            store.record_audit(actor.event(now, "store.backup", detail)).await?;
            answer(report)
        }
        AdminRequest::Audit { since, limit, before } => {
            let before = before.as_deref().map(str::parse).transpose()?;
            answer(super::audit::audit_page(store, since, limit, before).await?)
        }
        AdminRequest::AudienceKey { audience } => answer(audience_keys(store, audience).await?),
    }
}

/// The JSON of an answer. Every answer type is a map with string keys, so this
/// cannot fail in practice; it is still an error, never a panic.
fn answer(a: impl Serialize) -> Result<serde_json::Value, AdminError> {
    Ok(serde_json::to_value(a)?)
}

/// What `keys create` asks for, checked: the fields of `KeysCreate`.
pub(super) struct NewKeySpec {
    pub(super) name: String,
    pub(super) scopes: Vec<String>,
    pub(super) audiences: Vec<String>,
    pub(super) require_otp: bool,
    pub(super) otp_to: Option<String>,
}

impl NewKeySpec {
    /// Checks the fields as `keys create` takes them.
    pub(super) fn checked(
        name: String,
        scopes: Vec<String>,
        audiences: Vec<String>,
        require_otp: bool,
        otp_to: Option<String>,
    ) -> Result<Self, AdminError> {
        validate_names("scope", &scopes, 128)?;
        validate_names("audience", &audiences, usize::MAX)?;
        validate_grants(&scopes, &audiences)?;
        if name.is_empty() || name.len() > 128 {
            return Err(AdminError::Invalid("name must be 1 to 128 characters".into()));
        }
        if require_otp && otp_to.is_none() {
            return Err(AdminError::Invalid(
                "--require-otp needs --otp-to (an email address, webhook target or `totp`)".into(),
            ));
        }
        Ok(Self { name, scopes, audiences, require_otp, otp_to })
    }

    /// A fresh key and its record, created `now`.
    pub(super) fn generate(&self, now: u64) -> Result<(ApiKey, ApiKeyRecord), AdminError> {
        let key = ApiKey::generate(&mut rand_core::OsRng);
        let verifier = key.verifier(&DefaultBackend::default())?;
        let record = ApiKeyRecord {
            name: self.name.clone(),
            verifier: hex::encode(verifier.as_bytes()),
            scopes: self.scopes.clone(),
            audiences: self.audiences.clone(),
            require_otp: self.require_otp,
            otp_to: self.otp_to.clone(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            expires_at: None,
            replaced_by: None,
        };
        Ok((key, record))
    }
}

async fn create_key(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    spec: NewKeySpec,
    now: u64,
    actor: &Actor,
) -> Result<KeyCreated, AdminError> {
    let (key, record) = spec.generate(now)?;
    let audit = actor.event(now, "key.created", serde_json::json!({ "id": key.id().to_string(), "name": record.name }));
    store.put_api_keys(vec![(key.id(), record.clone())], Some(audit)).await?;
    if let Some(live) = live {
        live.key_changed(key.id(), &record).await;
    }
    Ok(KeyCreated { key: KeySummary::new(&key.id(), &record, now), api_key: key.encode().to_string().into() })
}

async fn rotate_key(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    id: &str,
    grace_secs: u64,
    now: u64,
    actor: &Actor,
) -> Result<KeyRotated, AdminError> {
    let old_id = key_id(id)?;
    let current = existing_key(store, old_id).await?;
    if !current.is_active(now) {
        return Err(AdminError::Conflict(format!("key {old_id} is revoked or expired; create a new key instead")));
    }
    let key = ApiKey::generate(&mut rand_core::OsRng);
    let verifier = key.verifier(&DefaultBackend::default())?;
    let new = ApiKeyRecord {
        verifier: hex::encode(verifier.as_bytes()),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
        expires_at: None,
        replaced_by: None,
        ..current
    };
    let rotation = KeyRotation {
        old: old_id,
        new: (key.id(), new.clone()),
        old_expires_at: now + grace_secs,
        audit: actor.event(
            now,
            "key.rotated",
            serde_json::json!({ "old": old_id.to_string(), "new": key.id().to_string(), "grace_secs": grace_secs }),
        ),
    };
    let old = store.rotate_api_key(rotation).await?.ok_or_else(|| no_key(old_id))?;
    if let Some(live) = live {
        live.key_changed(old_id, &old).await;
        live.key_changed(key.id(), &new).await;
    }
    Ok(KeyRotated {
        new: KeyCreated { key: KeySummary::new(&key.id(), &new, now), api_key: key.encode().to_string().into() },
        old_key_expires_at: now + grace_secs,
    })
}

async fn enroll_totp(store: &dyn StateStore, id: &str, replace: bool, now: u64) -> Result<KeyTotpEnrolled, AdminError> {
    use crate::otp::service::{self, OtpError};
    let id = key_id(id)?;
    let r = existing_key(store, id).await?;
    if r.otp_to.as_deref() != Some("totp") {
        return Err(AdminError::Conflict(format!(
            "key {id} does not use TOTP (its codes go to {}): create a key with --otp-to totp",
            r.otp_to.as_deref().unwrap_or("nowhere")
        )));
    }
    let secret = service::enroll_totp(store, *id.as_bytes(), service::STEP_UP_ACCOUNT, replace, now).await.map_err(
        |e| match e {
            OtpError::TotpAlreadyEnrolled(_) => AdminError::Conflict(format!(
                "key {id} is already enrolled: add --replace to replace its authenticator secret"
            )),
            OtpError::Unavailable(e) => AdminError::Store(StoreError::Unavailable(e)),
            other => AdminError::Invalid(other.to_string()),
        },
    )?;
    let enrolment = TotpEnrolmentAnswer::new(&secret, &TotpParams::default(), "onetrip", &r.name);
    Ok(KeyTotpEnrolled { id: id.to_string(), name: r.name, enrolment })
}

async fn revoke_token(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    token_id: &str,
    now: u64,
    actor: &Actor,
) -> Result<TokenRevoked, AdminError> {
    let token: [u8; 16] = hex::decode(token_id.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
        AdminError::Invalid(format!(
            "`{token_id}` is not a token id (32 hex characters, as whoami and introspection show it)"
        ))
    })?;
    // The token's own expiry is inside it, sealed: keep the revocation for the
    // longest lifetime a token can have.
    let until = now + crate::config::MAX_TOKEN_TTL_SECS;
    let audit =
        actor.event(now, "token.revoked", serde_json::json!({ "token_id": hex::encode(token), "until": until }));
    let until = store.revoke_token(token, until, audit).await?;
    if let Some(live) = live {
        live.token_revoked(token, until).await?;
    }
    Ok(TokenRevoked { token_id: hex::encode(token), revoked_until: until })
}

async fn audience_keys(store: &dyn StateStore, audience: String) -> Result<AudienceKeys, AdminError> {
    validate_names("audience", std::slice::from_ref(&audience), 64)?;
    let secrets = store.server_secrets().await?;
    let mut ring = secrets.token_keys.into_iter();
    let (id, master) = ring.next().ok_or_else(|| StoreError::Record("token_keys (empty)".into()))?;
    let mut keyring = onetrip_protocol::TokenKeyring::new(id, master);
    for (id, m) in ring {
        keyring.push_previous(id, m);
    }
    let keys = keyring
        .audience_secrets(&audience)
        .map_err(|e| AdminError::Invalid(e.to_string()))?
        .iter()
        .map(|(id, k)| AudienceKey { key_id: hex::encode(id), key: hex::encode(k.expose()).into() })
        .collect();
    Ok(AudienceKeys { audience, keys })
}

async fn server_keys(store: &dyn StateStore, now: u64) -> Result<ServerKeys, AdminError> {
    use onetrip_protocol::CryptoBackend;
    let secrets = store.server_secrets().await?;
    let identity = IdentityKey::from_seed(&secrets.identity_seed);
    let backend = DefaultBackend::default();
    let keys = secrets
        .server_keys
        .iter()
        .map(|(id, private, nb, na)| HandshakeKey {
            key_id: hex::encode(id),
            public: backend.static_key(private).map(|k| hex::encode(backend.public_key(&k))).unwrap_or_default(),
            not_before: *nb,
            not_after: *na,
            valid_now: *nb <= now && now <= *na,
        })
        .collect();
    Ok(ServerKeys {
        fingerprint: identity.fingerprint().to_string(),
        sealed: store.is_sealed(),
        store: store.location(),
        keys,
    })
}

pub(super) async fn existing_key(store: &dyn StateStore, id: KeyId) -> Result<ApiKeyRecord, AdminError> {
    store.get_api_key(id).await?.ok_or_else(|| no_key(id))
}

fn no_key(id: KeyId) -> AdminError {
    AdminError::NotFound(format!("no key {id}"))
}

pub(super) fn key_id(s: &str) -> Result<KeyId, AdminError> {
    KeyId::from_hex(s.trim()).ok_or_else(|| {
        AdminError::Invalid(format!("`{s}` is not a key id (32 hex characters, see `onetrip keys list`)"))
    })
}

fn validate_names(kind: &str, names: &[String], max_total: usize) -> Result<(), AdminError> {
    for n in names {
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminError::Invalid(format!(
                "{kind} `{n}` must be 1 to 64 printable characters without spaces"
            )));
        }
    }
    if names.join(" ").len() > max_total {
        return Err(AdminError::Invalid(format!("{kind}s together must fit in {max_total} characters")));
    }
    Ok(())
}

/// Refuses scope and audience lists whose meaning would surprise (PROTOCOL.md §6.3):
/// the server's own audience is not listed (every key may ask for it), and a
/// `scope@audience` names an audience the key can get.
fn validate_grants(scopes: &[String], audiences: &[String]) -> Result<(), AdminError> {
    use onetrip_protocol::token::SERVER_AUDIENCE;
    if audiences.iter().any(|a| a == SERVER_AUDIENCE) {
        return Err(AdminError::Invalid(format!(
            "`{SERVER_AUDIENCE}` is the server's own audience: every key may request it, with server scopes \
             (otp, introspect) only; list only resource audiences with --audience"
        )));
    }
    for scope in scopes {
        if let Some((name, audience)) = scope.split_once('@') {
            let reachable =
                audience == SERVER_AUDIENCE || audiences.is_empty() || audiences.iter().any(|a| a == audience);
            if name.is_empty() || audience.is_empty() || audience.contains('@') || !reachable {
                return Err(AdminError::Invalid(format!(
                    "scope `{scope}`: write scope@audience with an audience of this key (or `{SERVER_AUDIENCE}`)"
                )));
            }
        }
    }
    Ok(())
}
