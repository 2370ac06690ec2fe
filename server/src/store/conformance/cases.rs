//! Conformance cases of the key directory, the secrets, the token state and the
//! audit log (the OTP cases are in `otp_cases.rs`).

use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::IdentityKey;

use super::{Harness, T0};
use crate::otp::lockout::Guard;
use crate::seal::SealError;
use crate::store::ports::{KeyFilter, KeyRotation, TotpPut};
use crate::store::{ApiKeyRecord, AuditEntry, Backend, KeyPolicy, StoreError};

pub(crate) fn entry(at: u64, event: &'static str) -> AuditEntry {
    AuditEntry { at, event, detail: serde_json::json!({ "case": event }) }
}

/// Names of the audit events recorded so far, oldest first.
pub(crate) async fn events(b: &Backend) -> Vec<String> {
    let all = b.audit_since(0, usize::MAX).await.expect("audit");
    all.iter().map(|e| e["event"].as_str().expect("event name").to_owned()).collect()
}

pub(crate) fn count(events: &[String], name: &str) -> usize {
    events.iter().filter(|e| *e == name).count()
}

fn key(n: u8) -> KeyId {
    // Ids chosen so that byte order differs from insertion order.
    KeyId::from_bytes([n.wrapping_mul(37); 16])
}

fn record(name: &str, scopes: &[&str], audiences: &[&str], created_at: u64) -> ApiKeyRecord {
    ApiKeyRecord {
        name: name.into(),
        verifier: hex::encode([9u8; 32]),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
        require_otp: false,
        otp_to: None,
        created_at,
        last_used_at: None,
        revoked_at: None,
        expires_at: None,
        replaced_by: None,
    }
}

pub(crate) async fn keys_are_written_read_paged_filtered_and_updated_with_their_audit(h: &dyn Harness) {
    let b = h.open().await;
    let mut all = vec![
        (key(1), record("alpha", &["read"], &["db"], 100)),
        (key(2), record("beta", &["read", "write"], &[], 200)),
        (key(3), record("alpha", &[], &["db", "cache"], 300)),
        (key(4), record("gamma\u{0}nul", &["admin"], &["cache"], 400)),
        (key(5), record("delta", &["write"], &["db"], 500)),
    ];
    // A later record of the same id in one batch replaces the earlier one.
    let mut batch = all.clone();
    batch.insert(0, (key(5), record("stale", &[], &[], 1)));
    b.put_api_keys(batch, Some(entry(T0, "key.created"))).await.expect("put");
    assert_eq!(b.get_api_key(key(4)).await.expect("get").as_ref(), Some(&all[3].1), "NUL in a name survives");
    assert_eq!(b.get_api_key(key(5)).await.expect("get").expect("key 5").name, "delta");
    assert_eq!(b.get_api_key(key(9)).await.expect("get"), None);

    // A revocation through the read-modify-write, with its audit.
    let revoked = b
        .update_api_keys(
            vec![key(2), key(9), key(3)],
            Box::new(|id, r| {
                if *id == key(2) {
                    r.revoked_at = Some(T0);
                    true
                } else {
                    false
                }
            }),
            Some(entry(T0, "key.revoked")),
        )
        .await
        .expect("update");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].0, key(2));
    all[1].1.revoked_at = Some(T0);
    let untouched =
        b.update_api_keys(vec![key(1)], Box::new(|_, _| false), Some(entry(T0, "key.noop"))).await.expect("update");
    assert!(untouched.is_empty());
    let names = events(&b).await;
    assert_eq!((count(&names, "key.created"), count(&names, "key.revoked"), count(&names, "key.noop")), (1, 1, 0));

    // Pages in id byte order, filtered as `KeyFilter::matches` says, at every page size.
    all.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    let filters = [
        KeyFilter::default(),
        KeyFilter { name: Some("alpha".into()), ..Default::default() },
        KeyFilter { audience: Some("db".into()), ..Default::default() },
        KeyFilter { scope: Some("write".into()), ..Default::default() },
        KeyFilter { revoked: Some(true), ..Default::default() },
        KeyFilter { revoked: Some(false), created_after: Some(300), ..Default::default() },
        KeyFilter { name: Some("nobody".into()), ..Default::default() },
    ];
    for filter in &filters {
        let expected: Vec<_> = all.iter().filter(|(_, r)| filter.matches(r)).cloned().collect();
        for page_size in [1, 2, 10] {
            let mut got = Vec::new();
            let mut after = None;
            for _ in 0..10 {
                let page = b.api_keys_page(after, page_size, filter).await.expect("page");
                assert!(page.len() <= page_size);
                after = page.last().map(|(id, _)| *id);
                let done = page.len() < page_size;
                got.extend(page);
                if done {
                    break;
                }
            }
            assert_eq!(got, expected, "{filter:?}, pages of {page_size}");
        }
    }
    let mut seen = Vec::new();
    let n = crate::store::ports::for_each_api_key(&*b, 2, |id, _| seen.push(id)).await.expect("each");
    assert_eq!((n, seen), (5, all.iter().map(|(id, _)| *id).collect::<Vec<_>>()));
}

pub(crate) async fn overlapping_imports_in_opposite_orders_both_land(h: &dyn Harness) {
    let handles = h.handles(2).await;
    for round in 0..4u64 {
        let batch: Vec<(KeyId, ApiKeyRecord)> =
            (0..=255u8).map(|n| (KeyId::from_bytes([n; 16]), record("import", &[], &[], round))).collect();
        let reversed: Vec<_> = batch.iter().rev().cloned().collect();
        let (a, b) = (handles[0].clone(), handles[1].clone());
        let first = tokio::spawn(async move { a.put_api_keys(batch, None).await });
        let second = tokio::spawn(async move { b.put_api_keys(reversed, None).await });
        first.await.expect("task").expect("the ascending import");
        second.await.expect("task").expect("the descending import");
    }
    let n = crate::store::ports::for_each_api_key(&*handles[0], 100, |_, r| assert_eq!(r.created_at, 3))
        .await
        .expect("each");
    assert_eq!(n, 256);
}

pub(crate) async fn a_rotation_writes_new_old_and_audit_together_or_nothing(h: &dyn Harness) {
    let b = h.open().await;
    let mut old = record("old", &["read"], &[], 100);
    old.expires_at = Some(5_000);
    b.put_api_keys(vec![(key(1), old)], None).await.expect("put");
    let rotation = |old: KeyId, new: KeyId, end: u64| KeyRotation {
        old,
        new: (new, record("new", &["read"], &[], 200)),
        old_expires_at: end,
        audit: entry(200, "key.rotated"),
    };
    let written = b.rotate_api_key(rotation(key(1), key(2), 9_000)).await.expect("rotate").expect("old exists");
    assert_eq!(written.expires_at, Some(5_000), "an earlier end is kept");
    assert_eq!(written.replaced_by, Some(key(2).to_string()));
    assert_eq!(b.get_api_key(key(1)).await.expect("get"), Some(written));
    assert_eq!(b.get_api_key(key(2)).await.expect("get").expect("new").name, "new");
    let again = b.rotate_api_key(rotation(key(2), key(3), 300)).await.expect("rotate").expect("exists");
    assert_eq!(again.expires_at, Some(300));
    // A missing old key: nothing at all is written, not even the new key or the event.
    assert_eq!(b.rotate_api_key(rotation(key(7), key(8), 300)).await.expect("rotate"), None);
    assert_eq!(b.get_api_key(key(8)).await.expect("get"), None);
    assert_eq!(count(&events(&b).await, "key.rotated"), 2);
}

pub(crate) async fn revocations_keep_the_later_end_and_are_swept(h: &dyn Harness) {
    let b = h.open().await;
    assert_eq!(b.revoke_token([1; 16], 500, entry(100, "token.revoked")).await.expect("revoke"), 500);
    assert_eq!(b.revoke_token([1; 16], 400, entry(100, "token.revoked")).await.expect("revoke"), 500, "kept");
    assert_eq!(b.revoke_token([2; 16], 200, entry(100, "token.revoked")).await.expect("revoke"), 200);
    assert_eq!(b.revoked_tokens(0).await.expect("list"), vec![([1; 16], 500), ([2; 16], 200)]);
    assert_eq!(b.revoked_tokens(300).await.expect("list"), vec![([1; 16], 500)]);
    assert_eq!(b.sweep_revoked_tokens(300, 10).await.expect("sweep"), 1);
    assert_eq!(b.sweep_revoked_tokens(300, 10).await.expect("sweep"), 0);
    assert_eq!(b.revoked_tokens(0).await.expect("list"), vec![([1; 16], 500)]);
    assert_eq!(count(&events(&b).await, "token.revoked"), 3);
}

pub(crate) async fn replay_ids_ahead_are_kept_until_the_clock_passes_them(h: &dyn Harness) {
    let b = h.open().await;
    assert_eq!(b.replay_ids_after(0).await.expect("empty"), vec![]);
    b.put_replay_ids(vec![]).await.expect("nothing to put");
    b.put_replay_ids(vec![(1_040, [1; 16]), (1_001, [2; 16]), (1_000, [3; 16])]).await.expect("put");
    assert_eq!(b.replay_ids_after(1_000).await.expect("load"), vec![(1_001, [2; 16]), (1_040, [1; 16])]);
    assert_eq!(b.replay_ids_after(u64::MAX).await.expect("load"), vec![]);
    assert_eq!(b.sweep_replay_ids(1_039, 1).await.expect("sweep"), 1);
    assert_eq!(b.sweep_replay_ids(1_039, 10).await.expect("sweep"), 1);
    assert_eq!(b.sweep_replay_ids(1_039, 10).await.expect("sweep"), 0);
    assert_eq!(b.replay_ids_after(0).await.expect("load"), vec![(1_040, [1; 16])]);
}

pub(crate) async fn server_keys_rotate_and_are_maintained_with_their_audit(h: &dyn Harness) {
    let b = h.open().await;
    let first = b.server_key_validity().await.expect("validity");
    assert_eq!(first.len(), 1, "a new state has one handshake key");
    let (first_id, not_before, _) = first[0];
    assert_eq!(not_before, T0);
    let new = b.rotate_server_key(2_000, 5_000, 10_000, serde_json::json!({ "via": "test" })).await.expect("rotate");
    let mut validity = b.server_key_validity().await.expect("validity");
    validity.sort();
    let mut expected = vec![(first_id, T0, 5_000), (new, 2_000, 12_000)];
    expected.sort();
    assert_eq!(validity, expected);
    let secrets = b.server_secrets().await.expect("secrets");
    assert_eq!(secrets.server_keys.len(), 2);
    let policy = KeyPolicy { lifetime_secs: 10_000, overlap_secs: 1_000 };
    let before = events(&b).await.len();
    assert!(b.maintain_server_keys(3_000, policy).await.expect("maintain").is_empty(), "nothing due");
    assert_eq!(events(&b).await.len(), before, "a pass with nothing due writes nothing");
    let changes = b.maintain_server_keys(11_500, policy).await.expect("maintain");
    assert_eq!(changes.destroyed, vec![first_id]);
    let successor = changes.new_key_id.expect("a successor: the newest key ends within the overlap");
    let ids: Vec<[u8; 8]> = b.server_key_validity().await.expect("validity").iter().map(|k| k.0).collect();
    assert!(ids.contains(&new) && ids.contains(&successor) && !ids.contains(&first_id), "{ids:?}");
    let names = events(&b).await;
    assert_eq!((count(&names, "server_key.rotated"), count(&names, "server_key.destroyed")), (2, 1));
    // The asked-for rotation names who asked; the scheduled one is the server's own.
    let rotations: Vec<serde_json::Value> = b
        .audit_since(0, usize::MAX)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e["event"] == "server_key.rotated")
        .collect();
    assert_eq!(rotations[0]["detail"]["actor"], serde_json::json!({ "via": "test" }));
    assert!(rotations[1]["detail"].get("actor").is_none() && rotations[1]["detail"]["automatic"] == true);
}

pub(crate) async fn token_keys_rotate_and_retired_ones_are_dropped(h: &dyn Harness) {
    let b = h.open().await;
    let ids = |s: &crate::store::ServerSecrets| s.token_keys.iter().map(|k| k.0).collect::<Vec<_>>();
    let first = ids(&b.server_secrets().await.expect("secrets"))[0];
    let new = b.rotate_token_key(1_000, 900, serde_json::Value::Null).await.expect("rotate");
    assert_eq!(ids(&b.server_secrets().await.expect("secrets")), [new, first], "newest first");
    assert_eq!(b.drop_retired_token_keys(1_899).await.expect("drop"), 0);
    assert_eq!(b.drop_retired_token_keys(1_900).await.expect("drop"), 1);
    assert_eq!(ids(&b.server_secrets().await.expect("secrets")), [new]);
    let third = b.rotate_token_key(2_000, 0, serde_json::Value::Null).await.expect("rotate");
    assert_eq!(ids(&b.server_secrets().await.expect("secrets")), [third], "an overlap of 0 retires at once");
    let names = events(&b).await;
    assert_eq!((count(&names, "token_key.rotated"), count(&names, "token_key.retired")), (2, 1));
}

pub(crate) async fn the_otp_key_is_created_once_under_concurrency(h: &dyn Harness) {
    let handles = h.handles(4).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let b = handles[i % handles.len()].clone();
        tasks.spawn(async move { *b.otp_key().await.expect("otp key").expose() });
    }
    let keys = tasks.join_all().await;
    assert!(keys.iter().all(|k| *k == keys[0]), "every caller got the first writer's key");
    drop(handles);
    let b = h.open().await;
    assert_eq!(*b.otp_key().await.expect("otp key").expose(), keys[0], "and it is the stored one");
}

pub(crate) async fn audit_is_read_newest_first_and_deleted_oldest_first(h: &dyn Harness) {
    let b = h.open().await;
    let before = b.audit_since(0, usize::MAX).await.expect("read").len();
    for at in [1_000, 1_001, 1_002, 5_000, 5_001] {
        b.record_audit(AuditEntry { at, event: "test.event", detail: serde_json::json!({ "at": at }) })
            .await
            .expect("audit");
    }
    let newest = b.audit_since(1_001, 2).await.expect("read");
    let ats: Vec<u64> = newest.iter().map(|e| e["at"].as_u64().expect("at")).collect();
    assert_eq!(ats, vec![5_000, 5_001], "the newest `limit`, oldest first");
    assert_eq!(newest[0]["detail"]["at"], 5_000);
    assert_eq!(b.audit_since(1_001, 100).await.expect("read").len(), 4);
    let mut removed = Vec::new();
    for _ in 0..100 {
        match b.delete_audit_before(5_000, 2).await.expect("batch") {
            0 => break,
            n => removed.push(n),
        }
    }
    assert!(removed.iter().all(|&n| n <= 2), "{removed:?}");
    assert_eq!(removed.iter().sum::<usize>(), before + 3);
    let left: Vec<u64> =
        b.audit_since(0, usize::MAX).await.expect("read").iter().map(|e| e["at"].as_u64().expect("at")).collect();
    assert_eq!(left, vec![5_000, 5_001]);
}

pub(crate) async fn everything_committed_survives_a_restart(h: &dyn Harness) {
    let (b, created) = h.open_with(None).await.expect("open");
    assert!(created);
    let fingerprint = |s: &crate::store::ServerSecrets| IdentityKey::from_seed(&s.identity_seed).fingerprint();
    let secrets = b.server_secrets().await.expect("secrets");
    let otp_key = *b.otp_key().await.expect("otp key").expose();
    b.put_api_keys(vec![(key(1), record("kept", &["read"], &["db"], 100))], None).await.expect("put");
    b.revoke_token([4; 16], u64::from(u32::MAX), entry(T0, "token.revoked")).await.expect("revoke");
    b.put_replay_ids(vec![(2_000, [5; 16])]).await.expect("replay");
    let token_key = b.rotate_token_key(T0, 100, serde_json::Value::Null).await.expect("rotate");
    let totp = TotpPut {
        owner: [6; 16],
        account: "@key".into(),
        secret: zeroize::Zeroizing::new(vec![1; 20]),
        now: T0,
        replace: false,
    };
    b.put_totp(totp, Box::new(|_| entry(T0, "totp.enrolled"))).await.expect("totp");
    let guard = b
        .update_guard(
            b"key:g".to_vec(),
            Box::new(|g: &mut Guard| {
                g.locked_until = Some(9_999);
                None
            }),
        )
        .await
        .expect("guard");
    let events_before = events(&b).await;
    drop(b);

    let (b, created) = h.open_with(None).await.expect("reopen");
    assert!(!created, "an existing state is opened, never created again");
    let again = b.server_secrets().await.expect("secrets");
    assert_eq!(fingerprint(&again), fingerprint(&secrets), "same identity");
    assert_eq!(again.token_keys[0].0, token_key);
    assert_eq!(*b.otp_key().await.expect("otp key").expose(), otp_key, "same OTP key");
    assert_eq!(b.get_api_key(key(1)).await.expect("get").expect("key").name, "kept");
    assert_eq!(b.revoked_tokens(T0).await.expect("revoked"), vec![([4; 16], u64::from(u32::MAX))]);
    assert_eq!(b.replay_ids_after(T0).await.expect("replay"), vec![(2_000, [5; 16])]);
    assert!(b.has_totp([6; 16], "@key".into()).await.expect("totp"));
    assert_eq!(b.get_guard(b"key:g".to_vec()).await.expect("guard"), guard);
    assert_eq!(events(&b).await, events_before);
    assert!(events_before.contains(&"store.created".to_owned()));
    drop(b);
    match h.open_with(Some("a passphrase")).await {
        Err(StoreError::Seal(SealError::NotSealed)) => {}
        Err(other) => panic!("expected NotSealed, got {other}"),
        Ok(_) => panic!("an unsealed state opened with a passphrase"),
    }
}

pub(crate) async fn a_sealed_state_refuses_a_wrong_missing_or_unexpected_passphrase(h: &dyn Harness) {
    let (b, created) = h.open_with(Some("correct horse")).await.expect("create sealed");
    assert!(created && b.is_sealed());
    drop(b);
    let refused = |r: Result<(Backend, bool), StoreError>| match r {
        Err(StoreError::Seal(e)) => e,
        Err(other) => panic!("expected a seal error, got {other}"),
        Ok(_) => panic!("expected a seal error, got an open store"),
    };
    assert!(matches!(refused(h.open_with(None).await), SealError::PassphraseRequired));
    assert!(matches!(refused(h.open_with(Some("wrong")).await), SealError::WrongPassphrase));
    let (b, created) = h.open_with(Some("correct horse")).await.expect("reopen sealed");
    assert!(!created && b.is_sealed());
    assert_eq!(b.server_secrets().await.expect("secrets").server_keys.len(), 1);
    assert!(!b.location().contains("correct horse"));
}
