//! Bulk key changes through the real CLI: `keys create --count N --out FILE` writes
//! the new keys only to a new 0600 file, in one audited transaction; `keys revoke
//! --from FILE` takes that file (or ids) back in one transaction, names keys that do
//! not exist with exit 5, and never echoes a line that may hold a secret.

mod common;

use common::{cli, Server};
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Outcome;

fn audit_events(server: &Server, event: &str) -> Vec<serde_json::Value> {
    let out = server.cli(&["audit", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let all = v.as_array().or(v["events"].as_array()).expect("events").clone();
    all.into_iter().filter(|e| e["event"] == event).collect()
}

#[test]
fn a_batch_is_created_into_a_private_file_and_revoked_from_it_in_one_transaction_each() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("fleet.keys");
    let path = file.to_str().expect("utf-8 path");

    let out = server.cli(&["keys", "create", "--name", "fleet", "--count", "25", "--out", path, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["count"], 25);
    let text = std::fs::read_to_string(&file).expect("the keys file");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(text.lines().next().expect("a line")), "no secret printed");
    let keys: Vec<ApiKey> = text.lines().map(|l| ApiKey::parse(l).expect("an API key a line")).collect();
    assert_eq!(keys.len(), 25);
    let ids: Vec<String> =
        answer["ids"].as_array().expect("ids").iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, keys.iter().map(|k| k.id().to_string()).collect::<Vec<_>>(), "the file is in the order of the ids");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    for key in [&keys[0], &keys[24]] {
        assert!(matches!(server.handshake(key, &ClientRequest::default()), Outcome::Granted(_)), "served at once");
    }
    let created = audit_events(&server, "key.created_many");
    assert_eq!(created.len(), 1, "one event for the one transaction");
    assert_eq!(created[0]["detail"]["ids"].as_array().map(Vec::len), Some(25));

    // An existing file is never overwritten.
    let before = std::fs::read(&file).unwrap();
    let again = server.cli(&["keys", "create", "--name", "fleet", "--count", "2", "--out", path]);
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Revoke from the same file: all of them, in one transaction.
    let out = server.cli(&["keys", "revoke", "--from", path, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(revoked["revoked"].as_array().map(Vec::len), Some(25));
    for key in [&keys[0], &keys[13]] {
        assert!(matches!(server.handshake(key, &ClientRequest::default()), Outcome::AuthFailed), "refused at once");
    }
    assert_eq!(audit_events(&server, "key.revoked_many").len(), 1);

    // Ids, an already revoked key and a key that never existed: the rest still goes.
    let (other, other_id) = server.create_key(&["--name", "other"]);
    let unknown = "00112233445566778899aabbccddeeff";
    let list = tmp.path().join("ids.txt");
    std::fs::write(&list, format!("# incident 42\n{}\n\n{other_id}\n{unknown}\n", ids[3])).unwrap();
    let out = server.cli(&["keys", "revoke", "--from", list.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(5), "a key that does not exist is reported");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["revoked"], serde_json::json!([other_id]));
    assert_eq!(v["already_revoked"], serde_json::json!([ids[3]]));
    assert_eq!(v["not_found"], serde_json::json!([unknown]));
    assert!(String::from_utf8_lossy(&out.stderr).contains(unknown));
    assert!(matches!(server.handshake(&other, &ClientRequest::default()), Outcome::AuthFailed));

    // A line that is neither is refused by number, its text (maybe a secret) not echoed.
    let bad = tmp.path().join("bad.txt");
    std::fs::write(&bad, "ot_not-a-key-but-secret-looking\n").unwrap();
    let out = server.cli(&["keys", "revoke", "--from", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && !err.contains("secret-looking"), "{err}");
}

#[test]
fn bulk_creation_works_on_the_store_directly_and_needs_an_output_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let file = tmp.path().join("k.txt");
    // A store made by a first start, then no server: the CLI writes to it itself.
    let mut first = Server::start_in(&data, &[]).expect("first start");
    let _ = std::process::Command::new("kill").args(["-TERM", &first.child.id().to_string()]).status();
    let _ = first.child.wait();
    drop(first);
    let out = cli(&data, &["keys", "create", "--name", "offline", "--count", "3", "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&cli(&data, &["keys", "list", "--json"]).stdout).expect("json");
    assert_eq!(listed.len(), 3);

    let no_file = cli(&data, &["keys", "create", "--name", "x", "--count", "3"]);
    assert_eq!(no_file.status.code(), Some(2), "--count without --out is a usage error");
    let too_many = cli(&data, &["keys", "create", "--name", "x", "--count", "0", "--out", "/tmp/never"]);
    assert_eq!(too_many.status.code(), Some(2));
}
