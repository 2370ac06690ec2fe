//! `keys create --count N --out FILE` and `keys revoke --from FILE`: many keys in
//! few transactions (one per [`MAX_BULK`] keys), through the running server's admin
//! socket or the store directly, like every admin command. The new keys' secrets go
//! only to a new file of mode 0600, never to the terminal.

use std::io::{BufRead, Write};
use std::path::Path;

use onetrip_protocol::api_key::{ApiKey, KeyId};

use super::exit::{CliError, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_USAGE};
use super::output::decode;
use super::store_access::admin_target;
use super::Cli;
use crate::admin::answers::{KeysCreated, KeysRevoked};
use crate::admin::{AdminRequest, MAX_BULK};

/// The fields of `keys create` that every key of the batch shares.
pub(super) struct Batch {
    pub(super) name: String,
    pub(super) scopes: Vec<String>,
    pub(super) audiences: Vec<String>,
    pub(super) require_otp: bool,
    pub(super) otp_to: Option<String>,
}

/// Creates `count` keys, writing each transaction's keys to `out` before the next.
pub(super) async fn create_many(cli: &Cli, batch: Batch, count: u64, out: &Path, json: bool) -> Result<(), CliError> {
    let mut file = new_secret_file(out)?;
    let target = admin_target(cli).await?;
    let mut ids = Vec::new();
    let mut left = usize::try_from(count).unwrap_or(usize::MAX);
    while left > 0 {
        let n = left.min(MAX_BULK);
        let req = AdminRequest::KeysCreateMany {
            name: batch.name.clone(),
            scopes: batch.scopes.clone(),
            audiences: batch.audiences.clone(),
            require_otp: batch.require_otp,
            otp_to: batch.otp_to.clone(),
            count: n,
        };
        let created = match target.call(req).await.and_then(|v| decode::<KeysCreated>(&v)) {
            Ok(created) => created,
            Err(e) if ids.is_empty() => {
                let _ = std::fs::remove_file(out);
                return Err(e);
            }
            Err(e) => {
                return Err(CliError {
                    code: e.code,
                    message: format!(
                        "{}\n{} keys were created before this, and their API keys are in {}",
                        e.message,
                        ids.len(),
                        out.display()
                    ),
                })
            }
        };
        // The batch's secrets, wiped once written (sized exactly: no reallocation
        // leaves an unwiped copy behind).
        let size = created.keys.iter().map(|k| k.api_key.expose().len() + 1).sum();
        let mut text = zeroize::Zeroizing::new(String::with_capacity(size));
        for key in &created.keys {
            text.push_str(key.api_key.expose());
            text.push('\n');
            ids.push(key.key.id.clone());
        }
        file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(|e| CliError {
            code: EXIT_FAILURE,
            message: format!(
                "cannot write the API keys to {}: {e}. The {} keys of this batch exist: revoke them with `onetrip keys \
                 revoke <id>` (ids in `onetrip audit`, event key.created_many)",
                out.display(),
                created.keys.len()
            ),
        })?;
        left -= n;
    }
    if json {
        println!("{}", serde_json::json!({ "count": ids.len(), "ids": ids, "out": out }));
    } else {
        println!(
            "created {} keys named {:?}; their API keys are in {} (mode 0600), one a line. They are not shown again.",
            ids.len(),
            batch.name,
            out.display()
        );
    }
    Ok(())
}

/// Revokes every key `from` names; keys that do not exist are reported (exit 5)
/// after the others are revoked.
pub(super) async fn revoke_from(cli: &Cli, from: &Path, json: bool) -> Result<(), CliError> {
    let ids = read_ids(from)?;
    if ids.is_empty() {
        return Err(CliError { code: EXIT_USAGE, message: format!("{} names no key", from.display()) });
    }
    let target = admin_target(cli).await?;
    let mut total = KeysRevoked { revoked: Vec::new(), already_revoked: Vec::new(), not_found: Vec::new() };
    for chunk in ids.chunks(MAX_BULK) {
        let req = AdminRequest::KeysRevokeMany { ids: chunk.iter().map(KeyId::to_string).collect() };
        let done: KeysRevoked = decode(&target.call(req).await?)?;
        total.revoked.extend(done.revoked);
        total.already_revoked.extend(done.already_revoked);
        total.not_found.extend(done.not_found);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&total).unwrap_or_default());
    } else {
        println!("revoked {} keys; {} were revoked already", total.revoked.len(), total.already_revoked.len());
    }
    if total.not_found.is_empty() {
        return Ok(());
    }
    Err(CliError {
        code: EXIT_NOT_FOUND,
        message: format!("{} keys do not exist: {}", total.not_found.len(), total.not_found.join(", ")),
    })
}

/// A new file only the owner can read; an existing file is never overwritten.
fn new_secret_file(path: &Path) -> Result<std::fs::File, CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| CliError {
        code: if e.kind() == std::io::ErrorKind::AlreadyExists { EXIT_USAGE } else { EXIT_FAILURE },
        message: format!(
            "cannot create {} for the new API keys: {e} (an existing file is never overwritten)",
            path.display()
        ),
    })
}

/// The key ids in `path` (`-`: standard input): one API key or key id a line; blank
/// lines and `#` comments are skipped. A bad line is named by number only, since it
/// may hold a secret.
fn read_ids(path: &Path) -> Result<Vec<KeyId>, CliError> {
    let unreadable =
        |e: std::io::Error| CliError { code: EXIT_FAILURE, message: format!("cannot read {}: {e}", path.display()) };
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(unreadable)?))
    };
    let mut ids = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = zeroize::Zeroizing::new(line.map_err(unreadable)?);
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let id =
            KeyId::from_hex(text).or_else(|| ApiKey::parse(text).ok().map(|k| k.id())).ok_or_else(|| CliError {
                code: EXIT_USAGE,
                message: format!("{} line {}: neither a key id (32 hex digits) nor an API key", path.display(), n + 1),
            })?;
        ids.push(id);
    }
    Ok(ids)
}
