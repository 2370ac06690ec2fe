//! The admin socket: a Unix socket (mode 0600) in the data directory, one JSON
//! request per line and one JSON reply per line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{execute, AdminError, AdminRequest};
use crate::state::AppState;

/// Longest admin request line.
const MAX_LINE: usize = 1024 * 1024;

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
    // Who asked: the socket is mode 0600, so this is the server's own user or root,
    // but the log says which.
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(req) => {
                let asked = Asked::of(&req);
                let result = execute(&*state.store, Some(&state), req).await;
                asked.log(uid, &result);
                match result {
                    Ok(data) => Reply::answer(data),
                    Err(error) => Reply::failure(&error),
                }
            }
            Err(e) => Reply::failure(&AdminError::Invalid(format!("invalid admin request: {e}"))),
        };
        // Through a `Value`: its keys are sorted, the bytes the socket always carried.
        let reply = serde_json::to_value(&reply).map_err(std::io::Error::other)?;
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
    Ok(())
}

/// What an admin request's log line says about it: the operation, and the key's id
/// and name when the request or the answer has them. Nothing else of the request or
/// answer is logged (a new key's secret, an OTP destination).
struct Asked {
    op: String,
    key: Option<String>,
    name: Option<String>,
    started: std::time::Instant,
}

impl Asked {
    fn of(req: &AdminRequest) -> Self {
        let v = serde_json::to_value(req).unwrap_or_default();
        let text = |field: &str| v[field].as_str().map(str::to_owned);
        Self {
            op: text("op").unwrap_or_else(|| "?".into()),
            key: text("id"),
            name: text("name"),
            started: std::time::Instant::now(),
        }
    }

    fn log(self, uid: Option<u32>, result: &Result<serde_json::Value, AdminError>) {
        let ms = self.started.elapsed().as_millis() as u64;
        let from_answer = |field: &str| match result {
            Ok(data) => data[field].as_str().map(str::to_owned),
            Err(_) => None,
        };
        let key = self.key.or_else(|| from_answer("id"));
        let name = self.name.or_else(|| from_answer("name"));
        let (key, name) = (key.as_deref().unwrap_or("-"), name.as_deref().unwrap_or("-"));
        let uid = uid.map_or_else(|| "?".to_owned(), |u| u.to_string());
        match result {
            Ok(_) => tracing::info!(op = %self.op, key, name, uid, ms, outcome = "ok", "admin request"),
            Err(e) => {
                tracing::warn!(op = %self.op, key, name, uid, ms, outcome = e.kind(), error = %e, "admin request failed")
            }
        }
    }
}

/// Sends one request to a running server. `Ok(None)` when no server is listening.
pub async fn request(
    socket: &Path,
    req: &AdminRequest,
) -> Result<Option<Result<serde_json::Value, AdminError>>, AdminError> {
    let unreachable = |source| AdminError::Socket { path: socket.to_owned(), source };
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(unreachable(e)),
    };
    let (read, mut write) = stream.into_split();
    let line = serde_json::to_string(req)?;
    write.write_all(format!("{line}\n").as_bytes()).await.map_err(unreachable)?;
    let mut lines = BufReader::new(read).lines();
    let reply = lines
        .next_line()
        .await
        .map_err(unreachable)?
        .ok_or_else(|| AdminError::Failed("the server closed the admin connection without answering".into()))?;
    let reply: Reply = serde_json::from_str(&reply)?;
    Ok(Some(match reply {
        Reply { ok: true, data: Some(data), .. } => Ok(data),
        Reply { ok: true, data: None, .. } => Err(AdminError::Failed("the server answered without data".into())),
        Reply { ok: false, error, kind, .. } => Err(AdminError::from_kind(
            kind.as_deref().unwrap_or(""),
            error.unwrap_or_else(|| "unknown error".to_owned()),
        )),
    }))
}

/// One line the server writes back: `{"ok":true,"data":…}` or
/// `{"ok":false,"error":…,"kind":…}`.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

impl Reply {
    fn answer(data: serde_json::Value) -> Self {
        Reply { ok: true, data: Some(data), error: None, kind: None }
    }

    fn failure(error: &AdminError) -> Self {
        Reply { ok: false, data: None, error: Some(error.to_string()), kind: Some(error.kind().to_owned()) }
    }
}
