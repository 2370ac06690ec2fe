//! `keys list` reads keys a page at a time: pages are bounded whatever the key count,
//! cover every key exactly once in id order, and filter on the server side.

mod common;

use std::collections::BTreeSet;

use onetrip_protocol::api_key::KeyId;
use onetrip_server::admin::{execute, Actor, AdminRequest, MAX_KEYS_PAGE};
use onetrip_server::store::{ApiKeyRecord, Store};

fn id(i: u32) -> KeyId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&i.to_be_bytes());
    bytes[15] = 0x5a;
    KeyId::from_bytes(bytes)
}

fn record(i: u32) -> ApiKeyRecord {
    ApiKeyRecord {
        name: if i % 10 == 0 { "tens".into() } else { format!("key{i}") },
        verifier: hex::encode([9u8; 32]),
        scopes: if i % 3 == 0 { vec!["read".into()] } else { vec![] },
        audiences: if i % 4 == 0 { vec!["db".into()] } else { vec![] },
        require_otp: false,
        otp_to: None,
        created_at: 1_000 + u64::from(i),
        last_used_at: None,
        revoked_at: (i % 7 == 0).then_some(5_000),
        expires_at: None,
        replaced_by: None,
    }
}

fn list(after: Option<String>, limit: usize) -> AdminRequest {
    AdminRequest::KeysList { after, limit, name: None, audience: None, scope: None, revoked: None, created_after: None }
}

/// Every page of `req` (its `after` is replaced), as the ids each page held.
async fn pages(store: &dyn onetrip_server::store::StateStore, req: AdminRequest) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let mut req = req.clone();
        if let AdminRequest::KeysList { after: a, .. } = &mut req {
            *a = after.take();
        }
        let page = execute(store, None, req, &Actor::this_process()).await.expect("page");
        let ids: Vec<String> =
            page["keys"].as_array().expect("keys").iter().map(|k| k["id"].as_str().expect("id").to_owned()).collect();
        out.push(ids);
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
        assert!(out.len() < 1_000, "the listing does not end");
    }
}

#[tokio::test]
async fn pages_are_bounded_cover_every_key_once_in_order_and_filter_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open_or_init(dir.path(), None, 1_000).unwrap();
    let n = 2_500u32;
    let records: Vec<_> = (0..n).map(|i| (id(i), record(i))).collect();
    store.put_api_keys(&records).unwrap();
    let backend = store.into_backend();

    let all = pages(&*backend, list(None, 5_000)).await;
    assert!(all.iter().all(|p| p.len() <= MAX_KEYS_PAGE), "a page holds at most {MAX_KEYS_PAGE} keys");
    assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), vec![1_000, 1_000, 500]);
    let flat: Vec<String> = all.concat();
    let expected: Vec<String> = (0..n).map(|i| id(i).to_string()).collect();
    assert_eq!(flat, expected, "every key once, in id order");

    // Small pages resume exactly where the last one stopped.
    let small = pages(&*backend, list(None, 7)).await;
    assert!(small.iter().all(|p| p.len() <= 7));
    assert_eq!(small.concat(), expected);

    // Filters are applied before the page is cut: full pages of matches only.
    let filtered = |name: Option<&str>, audience: Option<&str>, scope: Option<&str>, revoked, created_after| {
        AdminRequest::KeysList {
            after: None,
            limit: 100,
            name: name.map(str::to_owned),
            audience: audience.map(str::to_owned),
            scope: scope.map(str::to_owned),
            revoked,
            created_after,
        }
    };
    let count = |pages: Vec<Vec<String>>| pages.concat().into_iter().collect::<BTreeSet<_>>().len();
    let want = |f: &dyn Fn(u32) -> bool| (0..n).filter(|i| f(*i)).count();
    assert_eq!(count(pages(&*backend, filtered(Some("tens"), None, None, None, None)).await), want(&|i| i % 10 == 0));
    assert_eq!(count(pages(&*backend, filtered(None, Some("db"), None, None, None)).await), want(&|i| i % 4 == 0));
    assert_eq!(count(pages(&*backend, filtered(None, None, Some("read"), None, None)).await), want(&|i| i % 3 == 0));
    assert_eq!(count(pages(&*backend, filtered(None, None, None, Some(true), None)).await), want(&|i| i % 7 == 0));
    assert_eq!(count(pages(&*backend, filtered(None, None, None, Some(false), None)).await), want(&|i| i % 7 != 0));
    assert_eq!(
        count(pages(&*backend, filtered(None, Some("db"), None, Some(false), Some(3_000))).await),
        want(&|i| i % 4 == 0 && i % 7 != 0 && 1_000 + i >= 3_000)
    );
    assert_eq!(count(pages(&*backend, filtered(Some("nobody"), None, None, None, None)).await), 0);

    // A cursor that is not a key id is a clear error, not an empty page.
    let bad = execute(&*backend, None, list(Some("not-an-id".into()), 10), &Actor::this_process()).await.unwrap_err();
    assert!(matches!(bad, onetrip_server::admin::AdminError::Invalid(_)), "{bad:?}");
    assert!(bad.to_string().contains("not a key id"), "{bad}");
}

#[test]
fn the_cli_streams_a_valid_listing_and_honours_limit_and_filters() {
    let server = common::Server::start(&[]);
    for name in ["alpha", "beta", "beta", "gamma"] {
        server.create_key(&["--name", name, "--audience", "db"]);
    }
    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = server.cli(&[&["keys", "list", "--json"], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("one JSON array")
    };
    assert_eq!(json(&[]).len(), 4);
    assert_eq!(json(&["--limit", "3"]).len(), 3);
    let betas = json(&["--name", "beta"]);
    assert_eq!(betas.len(), 2);
    assert!(betas.iter().all(|k| k["name"] == "beta"));
    assert!(json(&["--revoked"]).is_empty());
    assert!(json(&["--audience", "other"]).is_empty());
    // Resuming after the first key gives the other three.
    let first = json(&["--limit", "1"])[0]["id"].as_str().unwrap().to_owned();
    let rest = json(&["--after", &first]);
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|k| k["id"] != first.as_str()));
    // The plain listing prints one line per key.
    let out = server.cli(&["keys", "list", "--name", "gamma"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn cli_failures_have_their_own_exit_codes() {
    let server = common::Server::start(&[]);
    let code = |args: &[&str]| server.cli(args).status.code();
    // Not found: a well-formed id of no key, through the running server.
    assert_eq!(code(&["keys", "show", "00000000000000000000000000000000"]), Some(5));
    // Invalid: not a key id at all.
    assert_eq!(code(&["keys", "revoke", "nope"]), Some(2));
    // Conflict: rotating a revoked key.
    let (_, id) = server.create_key(&["--name", "gone"]);
    assert_eq!(code(&["keys", "revoke", &id]), Some(0));
    assert_eq!(code(&["keys", "rotate", &id]), Some(7));
    // The codes are documented where users look.
    let help =
        String::from_utf8(std::process::Command::new(common::BIN).arg("--help").output().unwrap().stdout).unwrap();
    assert!(help.contains("5 not found") && help.contains("6 store or server unreachable"), "{help}");
    // Not found without a server: no store in an empty directory.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(common::cli(empty.path(), &["keys", "list"]).status.code(), Some(5));
}

#[test]
fn unusable_settings_exit_as_invalid_values_and_name_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path())
            .env_remove("ONETRIP_PASSPHRASE")
            .output()
            .unwrap()
    };
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--token-ttl-secs", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: token_ttl_secs must be between 60 and 86400\n");
    let missing = tmp.path().join("missing.toml");
    let out = run(&["--config", missing.to_str().unwrap(), "keys", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("error: cannot read config {}: ", missing.display())), "{stderr}");
}
