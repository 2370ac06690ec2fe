//! Key management operations, and the admin Unix socket that carries them to a
//! running server. redb allows one process at a time, so while `onetrip serve` runs
//! the CLI sends its request over `admin.sock` (mode 0600: filesystem permissions are
//! the authentication); otherwise the CLI opens the store and runs the same
//! [`execute`] itself.

use std::path::Path;

use onetrip_protocol::api_key::{ApiKey, KeyId};
use onetrip_protocol::{DefaultBackend, IdentityKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::keys::KeyEntry;
use crate::state::{unix_now, AppState};
use crate::store::ports::{KeyFilter, KeyRotation};
use crate::store::{ApiKeyRecord, AuditEntry, StateStore};

/// Why an admin operation failed; each kind has a stable name on the socket and
/// its own CLI exit code ([`AdminError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed or names something invalid.
    #[error("{0}")]
    Invalid(String),
    /// The key (or other object) it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists but is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The operation failed for another reason (a file could not be written).
    #[error("{0}")]
    Failed(String),
    /// The change is stored, but the running server could not apply it yet.
    #[error("stored, but the running server could not apply it: {0}")]
    Live(String),
}

impl AdminError {
    /// The name the admin socket sends for this kind.
    pub fn kind(&self) -> &'static str {
        use crate::store::StoreError;
        match self {
            AdminError::Invalid(_) => "invalid",
            AdminError::NotFound(_) => "not_found",
            AdminError::Conflict(_) => "conflict",
            AdminError::Store(StoreError::Unavailable(_) | StoreError::Locked(_)) => "unavailable",
            AdminError::Store(StoreError::Seal(_)) => "passphrase",
            AdminError::Store(_) => "store",
            AdminError::Failed(_) => "failed",
            AdminError::Live(_) => "live",
        }
    }

    /// Rebuilds the error a server sent as `kind` and `message`.
    pub fn from_kind(kind: &str, message: String) -> Self {
        use crate::store::StoreError;
        match kind {
            "invalid" => AdminError::Invalid(message),
            "not_found" => AdminError::NotFound(message),
            "conflict" => AdminError::Conflict(message),
            "unavailable" => AdminError::Store(StoreError::Unavailable(message)),
            "live" => AdminError::Live(message),
            "failed" => AdminError::Failed(message),
            _ => AdminError::Store(StoreError::Record(message)),
        }
    }

    /// The `onetrip` exit code for this failure (listed in `onetrip --help`).
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            "invalid" => crate::cli::EXIT_USAGE,
            "not_found" => crate::cli::EXIT_NOT_FOUND,
            "conflict" => crate::cli::EXIT_CONFLICT,
            "unavailable" => crate::cli::EXIT_UNAVAILABLE,
            "passphrase" => crate::cli::EXIT_PASSPHRASE,
            "store" => crate::cli::EXIT_DAMAGED,
            _ => crate::cli::EXIT_FAILURE,
        }
    }
}

impl From<String> for AdminError {
    fn from(message: String) -> Self {
        AdminError::Invalid(message)
    }
}

/// Longest admin request line.
const MAX_LINE: usize = 64 * 1024;
/// Most keys in one `keys_list` answer.
pub const MAX_KEYS_PAGE: usize = 1_000;

fn default_keys_page() -> usize {
    MAX_KEYS_PAGE
}

/// One admin operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Create an API key; the answer carries the key string, shown once.
    KeysCreate {
        /// Human name.
        name: String,
        /// Scopes it may request.
        scopes: Vec<String>,
        /// Audiences it may request tokens for.
        audiences: Vec<String>,
        /// Requires a second factor.
        require_otp: bool,
        /// Where codes go.
        otp_to: Option<String>,
    },
    /// One page of keys, in id order: at most [`MAX_KEYS_PAGE`] records, so neither
    /// the server nor the socket ever holds a whole million-key listing.
    KeysList {
        /// Start after this key id (the previous page's `next_after`).
        #[serde(default)]
        after: Option<String>,
        /// Most records in this page (at most [`MAX_KEYS_PAGE`]).
        #[serde(default = "default_keys_page")]
        limit: usize,
        /// Only keys with this name.
        #[serde(default)]
        name: Option<String>,
        /// Only keys that list this audience.
        #[serde(default)]
        audience: Option<String>,
        /// Only keys that list this scope.
        #[serde(default)]
        scope: Option<String>,
        /// Only revoked (true) or only not revoked (false) keys.
        #[serde(default)]
        revoked: Option<bool>,
        /// Only keys created at or after this unix second.
        #[serde(default)]
        created_after: Option<u64>,
    },
    /// Show one key.
    KeysShow {
        /// Key id (hex).
        id: String,
    },
    /// Clear a key's second-factor lockout (wrong step-up codes).
    KeysUnlock {
        /// Key id (hex).
        id: String,
    },
    /// Revoke a key now.
    KeysRevoke {
        /// Key id (hex).
        id: String,
    },
    /// New key with the same settings; the old one stays valid `grace_secs`.
    KeysRotate {
        /// Key id (hex).
        id: String,
        /// Grace period for the old key.
        grace_secs: u64,
    },
    /// Enrol a key created with `--otp-to totp` in an authenticator app; the answer
    /// carries the secret and its `otpauth://` URI, shown once.
    KeysTotpEnroll {
        /// Key id (hex).
        id: String,
        /// Replace an existing enrolment (audited as `otp.totp_replace`).
        #[serde(default)]
        replace: bool,
    },
    /// Is a server answering on this socket? (The answer is `"pong"`.)
    Ping,
    /// Fingerprint and handshake keys.
    ServerKeyShow,
    /// New handshake key; the old ones stay valid `overlap_secs`.
    ServerKeyRotate {
        /// Overlap period.
        overlap_secs: u64,
    },
    /// The audience key a resource server needs for its `TokenVerifier`.
    AudienceKey {
        /// Audience name.
        audience: String,
    },
    /// New token master key; older ones still open tokens for `overlap_secs`.
    TokenKeyRotate {
        /// How long tokens sealed under the older keys stay valid.
        overlap_secs: u64,
    },
    /// Revoke one token (by the `token_id` whoami or introspection shows) until it
    /// would have expired; persisted, so a restart keeps it.
    TokensRevoke {
        /// Token id (32 hex characters).
        token_id: String,
    },
    /// Write a consistent backup of the store to `path` (absolute: the server's
    /// working directory is not the CLI's), from one read transaction.
    StoreBackup {
        /// Backup file.
        path: std::path::PathBuf,
        /// Replace an existing file.
        #[serde(default)]
        force: bool,
    },
    /// Audit events since a time.
    Audit {
        /// Unix seconds.
        since: u64,
        /// Most events returned.
        limit: usize,
    },
}

/// Hooks into a running server so changes apply without restart.
#[async_trait::async_trait]
pub trait Live: Send + Sync {
    /// A key record was created or changed.
    async fn key_changed(&self, id: KeyId, record: &ApiKeyRecord);
    /// Handshake keys changed in the store.
    async fn server_keys_changed(&self) -> Result<(), String>;
    /// Validity of new handshake keys (the server's configured lifetime).
    fn server_key_lifetime_secs(&self) -> u64 {
        crate::store::DEFAULT_SERVER_KEY_LIFETIME_SECS
    }
    /// A token was revoked until `until`.
    async fn token_revoked(&self, _token_id: [u8; 16], _until: u64) -> Result<(), String> {
        Ok(())
    }
    /// Token master keys changed in the store.
    async fn token_keys_changed(&self) -> Result<(), String> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Live for AppState {
    async fn key_changed(&self, id: KeyId, record: &ApiKeyRecord) {
        match KeyEntry::new(id, record.clone()) {
            Some(entry) => {
                let (st, now) = (self.clone(), self.now());
                // One key's DH values (one per server key) before it is served: CPU
                // work, so off the request threads, and none for the other keys.
                let warmed = tokio::task::spawn_blocking(move || {
                    st.keys.upsert_warm(entry, &st.handshake.load().responder, now)
                })
                .await;
                if warmed.is_err() {
                    // Serve the key uncached rather than not at all.
                    if let Some(entry) = KeyEntry::new(id, record.clone()) {
                        self.keys.upsert(entry);
                    }
                }
            }
            None => tracing::error!(key = %id, "a key record in the store is damaged; it is not served"),
        }
    }
    async fn server_keys_changed(&self) -> Result<(), String> {
        self.reload_handshake_keys().await.map_err(|e| e.to_string())
    }
    fn server_key_lifetime_secs(&self) -> u64 {
        self.settings.server_key_lifetime_secs
    }
    async fn token_keys_changed(&self) -> Result<(), String> {
        self.reload_token_keys().await.map_err(|e| e.to_string())
    }
    async fn token_revoked(&self, token_id: [u8; 16], until: u64) -> Result<(), String> {
        self.shared.revoke_token(token_id, until).await.map_err(|e| e.to_string())
    }
}

fn key_id(s: &str) -> Result<KeyId, String> {
    KeyId::from_hex(s.trim())
        .ok_or_else(|| format!("`{s}` is not a key id (32 hex characters, see `onetrip keys list`)"))
}

fn record_json(id: &KeyId, r: &ApiKeyRecord, now: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id.to_string(),
        "name": r.name,
        "scopes": r.scopes,
        "audiences": r.audiences,
        "require_otp": r.require_otp,
        "otp_to": r.otp_to,
        "created_at": r.created_at,
        "last_used_at": r.last_used_at,
        "revoked_at": r.revoked_at,
        "expires_at": r.expires_at,
        "replaced_by": r.replaced_by,
        "active": r.is_active(now),
    })
}

/// A key's second-factor lockout, as `keys show` prints it.
fn lock_json(guard: &crate::otp::lockout::Guard, now: u64) -> serde_json::Value {
    let policy = crate::otp::lockout::LockoutPolicy::default();
    serde_json::json!({
        "locked": guard.locked(now).is_some(),
        "locked_until": guard.locked(now).map(|_| guard.locked_until),
        "wrong_codes_last_hour": guard.recent_failures(now, &policy),
        "lockouts": guard.lockouts,
    })
}

fn validate_names(kind: &str, names: &[String], max_total: usize) -> Result<(), String> {
    for n in names {
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{kind} `{n}` must be 1 to 64 printable characters without spaces"));
        }
    }
    if names.join(" ").len() > max_total {
        return Err(format!("{kind}s together must fit in {max_total} characters"));
    }
    Ok(())
}

/// Refuses scope and audience lists whose meaning would surprise (PROTOCOL.md §6.3):
/// the server's own audience is not listed (every key may ask for it), and a
/// `scope@audience` names an audience the key can get.
fn validate_grants(scopes: &[String], audiences: &[String]) -> Result<(), String> {
    use onetrip_protocol::token::SERVER_AUDIENCE;
    if audiences.iter().any(|a| a == SERVER_AUDIENCE) {
        return Err(format!(
            "`{SERVER_AUDIENCE}` is the server's own audience: every key may request it, with server scopes \
             (otp, introspect) only; list only resource audiences with --audience"
        ));
    }
    for scope in scopes {
        if let Some((name, audience)) = scope.split_once('@') {
            let reachable =
                audience == SERVER_AUDIENCE || audiences.is_empty() || audiences.iter().any(|a| a == audience);
            if name.is_empty() || audience.is_empty() || audience.contains('@') || !reachable {
                return Err(format!(
                    "scope `{scope}`: write scope@audience with an audience of this key (or `{SERVER_AUDIENCE}`)"
                ));
            }
        }
    }
    Ok(())
}

/// Runs one admin operation against `store`, telling `live` (a running server) about
/// changes.
pub async fn execute(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    req: AdminRequest,
) -> Result<serde_json::Value, AdminError> {
    let now = unix_now();
    match req {
        AdminRequest::KeysCreate { name, scopes, audiences, require_otp, otp_to } => {
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
            let key = ApiKey::generate(&mut rand_core::OsRng);
            let verifier = key.verifier(&DefaultBackend::default()).map_err(|e| e.to_string())?;
            let record = ApiKeyRecord {
                name,
                verifier: hex::encode(verifier.as_bytes()),
                scopes,
                audiences,
                require_otp,
                otp_to,
                created_at: now,
                last_used_at: None,
                revoked_at: None,
                expires_at: None,
                replaced_by: None,
            };
            let audit = AuditEntry {
                at: now,
                event: "key.created",
                detail: serde_json::json!({ "id": key.id().to_string(), "name": record.name }),
            };
            store.put_api_keys(vec![(key.id(), record.clone())], Some(audit)).await?;
            if let Some(live) = live {
                live.key_changed(key.id(), &record).await;
            }
            let mut out = record_json(&key.id(), &record, now);
            out["api_key"] = serde_json::Value::String(key.encode().to_string());
            Ok(out)
        }
        AdminRequest::KeysList { after, limit, name, audience, scope, revoked, created_after } => {
            let after = after.as_deref().map(key_id).transpose()?;
            let limit = limit.clamp(1, MAX_KEYS_PAGE);
            let filter = KeyFilter { name, audience, scope, revoked, created_after };
            let page = store.api_keys_page(after, limit, &filter).await?;
            // A full page may have a successor; a short one is the last.
            let next_after = (page.len() == limit).then(|| page.last().map(|(id, _)| id.to_string())).flatten();
            let keys: Vec<_> = page.iter().map(|(id, r)| record_json(id, r, now)).collect();
            Ok(serde_json::json!({ "keys": keys, "next_after": next_after }))
        }
        AdminRequest::KeysShow { id } => {
            let id = key_id(&id)?;
            let r = store.get_api_key(id).await?.ok_or_else(|| AdminError::NotFound(format!("no key {id}")))?;
            let guard = store.get_guard(crate::otp::lockout::step_up_subject(id.as_bytes())).await?;
            let mut out = record_json(&id, &r, now);
            out["second_factor_lock"] = lock_json(&guard, now);
            Ok(out)
        }
        AdminRequest::KeysUnlock { id } => {
            let id = key_id(&id)?;
            store.get_api_key(id).await?.ok_or_else(|| AdminError::NotFound(format!("no key {id}")))?;
            let unlock = Box::new(move |g: &mut crate::otp::lockout::Guard| {
                let was = lock_json(g, now);
                g.unlock();
                Some(AuditEntry {
                    at: now,
                    event: "otp.unlocked",
                    detail: serde_json::json!({ "key_id": id.to_string(), "before": was, "by": "admin" }),
                })
            });
            let guard = store.update_guard(crate::otp::lockout::step_up_subject(id.as_bytes()), unlock).await?;
            Ok(serde_json::json!({ "id": id.to_string(), "second_factor_lock": lock_json(&guard, now) }))
        }
        AdminRequest::KeysRevoke { id } => {
            let id = key_id(&id)?;
            let revoke = Box::new(move |_: &KeyId, r: &mut ApiKeyRecord| {
                let fresh = r.revoked_at.is_none();
                r.revoked_at.get_or_insert(now);
                fresh
            });
            let audit =
                AuditEntry { at: now, event: "key.revoked", detail: serde_json::json!({ "id": id.to_string() }) };
            store.update_api_keys(vec![id], revoke, Some(audit)).await?;
            let r = store.get_api_key(id).await?.ok_or_else(|| AdminError::NotFound(format!("no key {id}")))?;
            if let Some(live) = live {
                live.key_changed(id, &r).await;
            }
            Ok(record_json(&id, &r, now))
        }
        AdminRequest::KeysRotate { id, grace_secs } => {
            let old_id = key_id(&id)?;
            let current =
                store.get_api_key(old_id).await?.ok_or_else(|| AdminError::NotFound(format!("no key {old_id}")))?;
            if !current.is_active(now) {
                return Err(AdminError::Conflict(format!(
                    "key {old_id} is revoked or expired; create a new key instead"
                )));
            }
            let key = ApiKey::generate(&mut rand_core::OsRng);
            let verifier = key.verifier(&DefaultBackend::default()).map_err(|e| e.to_string())?;
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
                audit: AuditEntry {
                    at: now,
                    event: "key.rotated",
                    detail: serde_json::json!({ "old": old_id.to_string(), "new": key.id().to_string(), "grace_secs": grace_secs }),
                },
            };
            let old = store
                .rotate_api_key(rotation)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("no key {old_id}")))?;
            if let Some(live) = live {
                live.key_changed(old_id, &old).await;
                live.key_changed(key.id(), &new).await;
            }
            let mut out = record_json(&key.id(), &new, now);
            out["api_key"] = serde_json::Value::String(key.encode().to_string());
            out["old_key_expires_at"] = serde_json::json!(now + grace_secs);
            Ok(out)
        }
        AdminRequest::KeysTotpEnroll { id, replace } => {
            let id = key_id(&id)?;
            let r = store.get_api_key(id).await?.ok_or_else(|| AdminError::NotFound(format!("no key {id}")))?;
            if r.otp_to.as_deref() != Some("totp") {
                return Err(AdminError::Conflict(format!(
                    "key {id} does not use TOTP (its codes go to {}): create a key with --otp-to totp",
                    r.otp_to.as_deref().unwrap_or("nowhere")
                )));
            }
            let account = crate::otp::service::STEP_UP_ACCOUNT;
            let secret =
                crate::otp::service::enroll_totp(store, *id.as_bytes(), account, replace, now).await.map_err(|e| {
                    match e {
                        crate::otp::service::OtpError::TotpAlreadyEnrolled(_) => AdminError::Conflict(format!(
                            "key {id} is already enrolled: add --replace to replace its authenticator secret"
                        )),
                        crate::otp::service::OtpError::Unavailable(e) => {
                            AdminError::Store(crate::store::StoreError::Unavailable(e))
                        }
                        other => AdminError::Invalid(other.to_string()),
                    }
                })?;
            let params = crate::otp::totp::TotpParams::default();
            let uri = crate::otp::totp::otpauth_uri(&secret, &params, "onetrip", &r.name);
            Ok(serde_json::json!({
                "id": id.to_string(),
                "name": r.name,
                "secret": &*secret.to_base32(),
                "otpauth_uri": uri,
                "algorithm": "SHA1",
                "digits": 6,
                "period": 30,
            }))
        }
        AdminRequest::Ping => Ok(serde_json::json!("pong")),
        AdminRequest::ServerKeyShow => server_key_json(store, now).await,
        AdminRequest::ServerKeyRotate { overlap_secs } => {
            let lifetime =
                live.map_or(crate::store::DEFAULT_SERVER_KEY_LIFETIME_SECS, |l| l.server_key_lifetime_secs());
            let new_id = store.rotate_server_key(now, now + overlap_secs, lifetime).await?;
            if let Some(live) = live {
                live.server_keys_changed().await.map_err(AdminError::Live)?;
            }
            let mut out = server_key_json(store, now).await?;
            out["new_key_id"] = serde_json::Value::String(hex::encode(new_id));
            Ok(out)
        }
        AdminRequest::TokenKeyRotate { overlap_secs } => {
            let new = store.rotate_token_key(now, overlap_secs).await?;
            if let Some(live) = live {
                live.token_keys_changed().await.map_err(AdminError::Live)?;
            }
            let ids: Vec<String> =
                store.server_secrets().await?.token_keys.iter().map(|(id, _)| hex::encode(id)).collect();
            Ok(serde_json::json!({
                "new_key_id": hex::encode(new),
                "key_ids": ids,
                "older_keys_retire_at": now + overlap_secs,
            }))
        }
        AdminRequest::TokensRevoke { token_id } => {
            let token: [u8; 16] =
                hex::decode(token_id.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
                    format!("`{token_id}` is not a token id (32 hex characters, as whoami and introspection show it)")
                })?;
            // The token's own expiry is inside it, sealed: keep the revocation for the
            // longest lifetime a token can have.
            let until = now + crate::config::MAX_TOKEN_TTL_SECS;
            let audit = crate::store::AuditEntry {
                at: now,
                event: "token.revoked",
                detail: serde_json::json!({ "token_id": hex::encode(token), "until": until }),
            };
            let until = store.revoke_token(token, until, audit).await?;
            if let Some(live) = live {
                live.token_revoked(token, until).await.map_err(AdminError::Live)?;
            }
            Ok(serde_json::json!({ "token_id": hex::encode(token), "revoked_until": until }))
        }
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
            store.record_audit(crate::store::AuditEntry { at: now, event: "store.backup", detail }).await?;
            serde_json::to_value(report).map_err(|e| AdminError::Invalid(e.to_string()))
        }
        AdminRequest::Audit { since, limit } => Ok(serde_json::Value::Array(store.audit_since(since, limit).await?)),
        AdminRequest::AudienceKey { audience } => {
            validate_names("audience", std::slice::from_ref(&audience), 64)?;
            let secrets = store.server_secrets().await?;
            let mut ring = secrets.token_keys.into_iter();
            let (id, master) = ring
                .next()
                .ok_or_else(|| AdminError::Store(crate::store::StoreError::Record("token_keys (empty)".into())))?;
            let mut keyring = onetrip_protocol::TokenKeyring::new(id, master);
            for (id, m) in ring {
                keyring.push_previous(id, m);
            }
            let keys: Vec<_> = keyring
                .audience_secrets(&audience)
                .map_err(|e| e.to_string())?
                .iter()
                .map(|(id, k)| serde_json::json!({ "key_id": hex::encode(id), "key": hex::encode(k.expose()) }))
                .collect();
            Ok(serde_json::json!({ "audience": audience, "keys": keys }))
        }
    }
}

async fn server_key_json(store: &dyn StateStore, now: u64) -> Result<serde_json::Value, AdminError> {
    let secrets = store.server_secrets().await?;
    let identity = IdentityKey::from_seed(&secrets.identity_seed);
    let backend = DefaultBackend::default();
    let keys: Vec<_> = secrets
        .server_keys
        .iter()
        .map(|(id, private, nb, na)| {
            use onetrip_protocol::CryptoBackend;
            let public = backend.static_key(private).map(|k| hex::encode(backend.public_key(&k))).unwrap_or_default();
            serde_json::json!({
                "key_id": hex::encode(id),
                "public": public,
                "not_before": nb,
                "not_after": na,
                "valid_now": *nb <= now && now <= *na,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "fingerprint": identity.fingerprint().to_string(),
        "sealed": store.is_sealed(),
        "store": store.location(),
        "keys": keys,
    }))
}

/// Binds the admin socket (mode 0600). Call before announcing the server, so a CLI
/// that sees the server also finds its socket.
///
/// `bind` creates the socket file with the process umask (often 0755, or 0777), and a
/// chmod after it leaves an instant in which another user may connect and give admin
/// commands when the socket lives in a shared directory. So the socket is bound inside
/// a fresh 0700 directory next to its path, made 0600 there, and moved into place by
/// `rename`, which is atomic: at its path it is 0600 from the first instant.
pub fn bind_socket(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // Only one server can hold the store, so a socket file left here is stale.
    let _ = std::fs::remove_file(socket);
    let parent = socket.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A new name each time; `create` refuses an existing path (or a planted symlink).
    let staging = parent.join(format!(".onetrip-{:08x}", rand::random::<u32>()));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let inside = staging.join("s");
        let listener = UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, socket)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(staging.join("s"));
    let _ = std::fs::remove_dir(&staging);
    bound
}

/// Answers admin requests until the task is dropped.
pub async fn serve_socket(listener: UnixListener, state: AppState) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_admin_connection(stream, state).await {
                tracing::debug!(error = %e, "admin connection failed");
            }
        });
    }
}

async fn handle_admin_connection(stream: UnixStream, state: AppState) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(req) => {
                let op = serde_json::to_value(&req).ok().and_then(|v| v["op"].as_str().map(str::to_owned));
                tracing::info!(op = op.as_deref().unwrap_or("?"), "admin request");
                let result = execute(&*state.store, Some(&state), req).await;
                match result {
                    Ok(data) => serde_json::json!({ "ok": true, "data": data }),
                    Err(error) => {
                        serde_json::json!({ "ok": false, "error": error.to_string(), "kind": error.kind() })
                    }
                }
            }
            Err(e) => {
                serde_json::json!({ "ok": false, "error": format!("invalid admin request: {e}"), "kind": "invalid" })
            }
        };
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
    Ok(())
}

/// Sends one request to a running server. `Ok(None)` when no server is listening.
pub async fn request(
    socket: &Path,
    req: &AdminRequest,
) -> Result<Option<Result<serde_json::Value, AdminError>>, String> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot reach the admin socket {}: {e}", socket.display())),
    };
    let (read, mut write) = stream.into_split();
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    write.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(read).lines();
    let reply = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the server closed the admin connection without answering")?;
    let v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| e.to_string())?;
    if v["ok"].as_bool() == Some(true) {
        Ok(Some(Ok(v["data"].clone())))
    } else {
        let message = v["error"].as_str().unwrap_or("unknown error").to_owned();
        Ok(Some(Err(AdminError::from_kind(v["kind"].as_str().unwrap_or(""), message))))
    }
}
