//! Key creates, rotations and revocations cost the changed key's work only: the
//! in-memory directory precomputes the new key's static-static values and leaves every
//! other key alone, so a create at 1M keys costs what it costs at 1k.

use onetrip_protocol::api_key::ApiKey;
use onetrip_server::admin::{execute, Actor, AdminRequest};
use onetrip_server::config::Settings;
use onetrip_server::shared::MemoryShared;
use onetrip_server::state::AppState;
use onetrip_server::store::Store;

mod common;

fn create(name: &str) -> AdminRequest {
    AdminRequest::KeysCreate { name: name.into(), scopes: vec![], audiences: vec![], require_otp: false, otp_to: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_precomputes_only_the_changed_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open_or_init(dir.path(), None, common::now()).unwrap();
    let backend = store.into_backend();
    // Three keys written while no server ran: loaded at start, not yet warmed.
    for i in 0..3 {
        execute(&*backend, None, create(&format!("old{i}")), &Actor::this_process()).await.unwrap();
    }
    let state = AppState::new(Settings::defaults(dir.path().into()), backend, MemoryShared::new(1000)).await.unwrap();
    assert_eq!(state.keys.len(), 3);
    assert_eq!(state.keys.cached_static_statics(), 0, "start-up warming is the serve loop's");

    let created = execute(&*state.store, Some(&state), create("new"), &Actor::this_process()).await.unwrap();
    let key = ApiKey::parse(created["api_key"].as_str().unwrap()).unwrap();
    assert_eq!(state.keys.cached_static_statics(), 1, "the new key's value, and no other key's");
    assert!(state.keys.get(&key.id()).is_some_and(|e| e.record.is_active(state.now())));

    // Revoking does no DH at all, and the key stops being served at once.
    execute(&*state.store, Some(&state), AdminRequest::KeysRevoke { id: key.id().to_string() }, &Actor::this_process())
        .await
        .unwrap();
    assert!(state.keys.get(&key.id()).is_some_and(|e| !e.record.is_active(state.now())));
    assert_eq!(state.keys.cached_static_statics(), 0, "the revoked key's value went with its entry");
}

#[test]
fn a_token_minted_during_a_rotation_grace_ends_with_the_grace() {
    use onetrip_protocol::handshake::ClientRequest;
    use onetrip_protocol::Outcome;
    let server = common::Server::start(&[]);
    let (old_key, id) = server.create_key(&["--name", "svc"]);
    let out = server.cli(&["keys", "rotate", &id, "--grace-secs", "60", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_key = ApiKey::parse(rotated["api_key"].as_str().unwrap()).unwrap();
    let grant = |key: &ApiKey| match server.handshake(key, &ClientRequest::default()) {
        Outcome::Granted(g) => g,
        other => panic!("expected a token, got {other:?}"),
    };
    let old = grant(&old_key);
    assert!(old.expires_at <= old.server_time + 61, "capped at the grace: {} vs {}", old.expires_at, old.server_time);
    assert!(old.expires_at + 1 >= old.server_time + 59, "and not shorter than it");
    let new = grant(&new_key);
    assert_eq!(new.expires_at - new.server_time, 900, "a key without an end gets the full lifetime");
}
