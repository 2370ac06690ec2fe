//! Who asked for an admin change, as its audit event records it (`detail.actor`):
//! the uid on the other end of the admin socket (from the kernel's peer
//! credentials, not from anything the client says), or the CLI's own uid when it
//! writes to the store itself. Events of the OTP API and of handshakes record the
//! API key that asked (`key_id`); events with no actor are the server's own
//! (scheduled key rotations, retention).

use serde::Serialize;

use crate::store::AuditEntry;

/// The requester of an admin operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Actor {
    /// A client of the running server's admin socket.
    AdminSocket {
        /// Its uid, from the socket's peer credentials.
        uid: Option<u32>,
        /// That uid's user name, when the system knows it.
        user: Option<String>,
    },
    /// The CLI, writing to the store itself (no server running, or a shared database).
    Cli {
        /// The CLI process's uid.
        uid: Option<u32>,
        /// That uid's user name, when the system knows it.
        user: Option<String>,
    },
}

impl Actor {
    /// The peer `uid` of an admin socket connection.
    pub fn admin_socket(uid: Option<u32>) -> Self {
        Actor::AdminSocket { uid, user: uid.and_then(user_name) }
    }

    /// This process (the CLI on the store directly).
    pub fn this_process() -> Self {
        let uid = own_uid();
        Actor::Cli { uid, user: uid.and_then(user_name) }
    }

    /// An audit event done by this actor: `detail` gains `actor`.
    pub(super) fn event(&self, at: u64, event: &'static str, detail: serde_json::Value) -> AuditEntry {
        AuditEntry { at, event, detail }.by(self.json())
    }

    /// As audit events record it.
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(target_os = "linux")]
fn own_uid() -> Option<u32> {
    Some(rustix::process::getuid().as_raw())
}

#[cfg(not(target_os = "linux"))]
fn own_uid() -> Option<u32> {
    None
}

/// The user name of `uid` from `/etc/passwd` (`name:password:uid:…`); `None` when
/// there is no such file or entry (a container's arbitrary uid).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_user(&passwd, uid)
}

fn passwd_user(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_named_from_passwd_and_malformed_lines_are_skipped() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nbroken line\n:x:7:7::/:/bin/false\nops:x:1000:1000::/home/ops:/bin/sh\n";
        assert_eq!(passwd_user(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_user(passwd, 1000).as_deref(), Some("ops"));
        assert_eq!(passwd_user(passwd, 7), None, "an empty name is no name");
        assert_eq!(passwd_user(passwd, 4242), None);
    }

    #[test]
    fn an_event_carries_its_actor_beside_its_own_detail() {
        let actor = Actor::AdminSocket { uid: Some(1000), user: Some("ops".into()) };
        let e = actor.event(5, "key.revoked", serde_json::json!({ "id": "ab" }));
        assert_eq!(e.detail["id"], "ab");
        assert_eq!(e.detail["actor"], serde_json::json!({ "via": "admin_socket", "uid": 1000, "user": "ops" }));
    }
}
