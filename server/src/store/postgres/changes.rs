//! The change feed: every key write, handshake key change, token key change and
//! token revocation sends `pg_notify('onetrip_changes', <json>)` in the transaction
//! that makes it (PostgreSQL delivers it at commit, and never for a rollback), and
//! [`PgBackend::listen_changes`] hands them to a replica, which keeps its key
//! directory in memory. A dedicated connection LISTENs; whenever it (re)connects,
//! a [`Change::Resync`] comes first, because notifications sent while it was away
//! are lost and the consumer must reload.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use onetrip_protocol::api_key::KeyId;
use tokio::sync::mpsc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Socket};

use super::connection::{db_error, tls_connector, TlsMode};
use super::{query, PgBackend};
use crate::store::ports::Change;
use crate::store::StoreError;

/// The notification channel.
pub const CHANNEL: &str = "onetrip_changes";
/// More keys than this in one transaction (an import) announce one resync instead
/// of a notification each.
const KEYS_PER_NOTIFICATION_LIMIT: usize = 64;
/// Buffered changes per receiver; the listener waits while it is full.
const QUEUE: usize = 1024;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Change {
    fn payload(&self) -> String {
        let v = match self {
            Change::Key(id) => serde_json::json!({ "kind": "key", "id": id.to_string() }),
            Change::ServerKeys => serde_json::json!({ "kind": "server_keys" }),
            Change::TokenKeys => serde_json::json!({ "kind": "token_keys" }),
            Change::TokenRevoked(id) => serde_json::json!({ "kind": "token_revoked", "id": hex::encode(id) }),
            Change::Resync => serde_json::json!({ "kind": "resync" }),
        };
        v.to_string()
    }

    /// A payload read back; one that cannot be read asks for a resync rather than
    /// being dropped.
    fn parse(payload: &str) -> Change {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let id = v["id"].as_str();
        match v["kind"].as_str() {
            Some("key") => id.and_then(KeyId::from_hex).map_or(Change::Resync, Change::Key),
            Some("server_keys") => Change::ServerKeys,
            Some("token_keys") => Change::TokenKeys,
            Some("token_revoked") => id
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map_or(Change::Resync, Change::TokenRevoked),
            _ => Change::Resync,
        }
    }
}

/// Announces `change` when `tx` commits.
pub(super) async fn notify(tx: &impl GenericClient, change: &Change) -> Result<(), StoreError> {
    query(tx, "SELECT pg_notify($1, $2)", &[&CHANNEL, &change.payload()]).await?;
    Ok(())
}

/// Announces writes of the keys `ids` when `tx` commits.
pub(super) async fn notify_keys(
    tx: &impl GenericClient,
    ids: impl IntoIterator<Item = KeyId>,
) -> Result<(), StoreError> {
    let ids: Vec<KeyId> = ids.into_iter().take(KEYS_PER_NOTIFICATION_LIMIT + 1).collect();
    if ids.len() > KEYS_PER_NOTIFICATION_LIMIT {
        return notify(tx, &Change::Resync).await;
    }
    for id in ids {
        notify(tx, &Change::Key(id)).await?;
    }
    Ok(())
}

impl PgBackend {
    /// The changes made by every replica and CLI on this database, from now on.
    /// The first message, once the listening connection is up, is a
    /// [`Change::Resync`], and so is the first after every reconnection. The
    /// listener stops when the receiver is dropped.
    pub fn listen_changes(&self) -> mpsc::Receiver<Change> {
        let (out, rx) = mpsc::channel(QUEUE);
        let target = std::sync::Arc::clone(&self.target);
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            while !out.is_closed() {
                let listened = match target.tls {
                    TlsMode::Disable => listen(&target.config, tokio_postgres::NoTls, &out).await,
                    TlsMode::VerifyFull => match tls_connector(target.root_cert.as_deref()) {
                        Ok(tls) => listen(&target.config, tls, &out).await,
                        Err(e) => Err(e),
                    },
                };
                match listened {
                    // It was up: start the backoff again.
                    Ok(()) => backoff = BACKOFF_MIN,
                    Err(e) => {
                        tracing::warn!(error = %e, url = %target.shown, "change feed: cannot listen; retrying");
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = out.closed() => break,
                }
            }
        });
        rx
    }
}

/// One listening connection, until it drops or the receiver goes. `Ok` once it had
/// been listening.
async fn listen<T>(config: &tokio_postgres::Config, tls: T, out: &mpsc::Sender<Change>) -> Result<(), StoreError>
where
    T: MakeTlsConnect<Socket>,
{
    let (client, mut connection) = config.connect(tls).await.map_err(db_error)?;
    // The connection delivers notifications only to whoever polls it.
    let (notes, mut incoming) = mpsc::unbounded_channel::<String>();
    let driver = async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                if notes.send(n.payload().to_owned()).is_err() {
                    break;
                }
            }
        }
    };
    tokio::pin!(driver);
    let command = format!("LISTEN {CHANNEL}");
    tokio::select! {
        listened = client.batch_execute(&command) => listened.map_err(db_error)?,
        () = &mut driver => return Err(StoreError::Unavailable("the change feed connection closed".into())),
    }
    if out.send(Change::Resync).await.is_err() {
        return Ok(());
    }
    loop {
        tokio::select! {
            () = &mut driver => {
                // Deliver what arrived before the connection ended.
                while let Ok(payload) = incoming.try_recv() {
                    if out.send(Change::parse(&payload)).await.is_err() {
                        return Ok(());
                    }
                }
                return Ok(());
            }
            Some(payload) = incoming.recv() => {
                if out.send(Change::parse(&payload)).await.is_err() {
                    return Ok(());
                }
            }
            () = out.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_unreadable_ones_ask_for_a_resync() {
        for change in [
            Change::Key(KeyId::from_bytes([7; 16])),
            Change::ServerKeys,
            Change::TokenKeys,
            Change::TokenRevoked([9; 16]),
            Change::Resync,
        ] {
            assert_eq!(Change::parse(&change.payload()), change);
        }
        assert_eq!(Change::parse("{\"kind\":\"key\",\"id\":\"zz\"}"), Change::Resync);
        assert_eq!(Change::parse("not json"), Change::Resync);
    }
}
