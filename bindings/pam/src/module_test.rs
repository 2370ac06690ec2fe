//! The module's safe core without PAM: arguments, key file permissions, the replay
//! directory and a whole check with a locally minted token.

use std::os::unix::fs::PermissionsExt;

use onetrip_client::{Claims, KeyId};

use super::*;

const NOW: u64 = 1_790_000_000;
const KEY: [u8; 32] = [7; 32];

fn setup() -> (tempfile::TempDir, Args) {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("db.key");
    fs::write(&key_file, format!("# onetrip audience-key db\n{}:{}\n", hex::encode(b"tk01"), hex::encode(KEY)))
        .unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    let replay_dir = tmp.path().join("replay");
    fs::create_dir(&replay_dir).unwrap();
    fs::set_permissions(&replay_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let args = Args { key_file, audience: "db".into(), replay_dir, database: None };
    (tmp, args)
}

fn credential(user: &str, database: Option<&str>, at: u64, nonce: u8) -> String {
    let verifier = TokenVerifier::new(DefaultBackend::default(), "db", &[(*b"tk01", Secret::new(KEY))]).unwrap();
    let session_key = Secret::new([3; 32]);
    let claims =
        Claims::new([1; 16], KeyId::from_bytes([2; 16]), NOW, NOW + 900, false, "db", "", session_key.clone()).unwrap();
    let token = verifier.seal_with_nonce(&claims, &[nonce; 12]).unwrap();
    onetrip_client::login::login_credential(&token, &session_key, user, database, at, &[nonce; 16]).unwrap().to_string()
}

#[test]
fn arguments_parse_and_unknown_or_missing_ones_are_refused() {
    let a = parse_args(["keyfile=/k", "audience=db", "replaydir=/r", "database=orders"]).unwrap();
    assert_eq!(a.database.as_deref(), Some("orders"));
    assert!(matches!(parse_args(["keyfile=/k", "audience=db"]), Err(ModuleError::MissingArg("replaydir"))));
    assert!(matches!(parse_args(["debug"]), Err(ModuleError::UnknownArg(a)) if a == "debug"));
}

#[test]
fn a_valid_credential_is_accepted_once() {
    let (_tmp, args) = setup();
    let c = credential("app", None, NOW, 1);
    authenticate(&args, "app", &c, NOW + 1).unwrap();
    assert!(matches!(authenticate(&args, "app", &c, NOW + 2), Err(ModuleError::Replayed)));
    let e = authenticate(&args, "admin", &credential("app", None, NOW, 2), NOW).unwrap_err();
    assert!(matches!(e, ModuleError::Refused(LoginError::BadProof)) && !e.is_config());
    assert!(!e.to_string().contains(&c[5..40]));
}

#[test]
fn a_bound_database_must_match() {
    let (_tmp, mut args) = setup();
    args.database = Some("orders".into());
    assert!(authenticate(&args, "app", &credential("app", None, NOW, 1), NOW).is_err());
    assert!(authenticate(&args, "app", &credential("app", Some("billing"), NOW, 2), NOW).is_err());
    authenticate(&args, "app", &credential("app", Some("orders"), NOW, 3), NOW).unwrap();
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let (_tmp, args) = setup();
    fs::set_permissions(&args.key_file, fs::Permissions::from_mode(0o640)).unwrap();
    let e = authenticate(&args, "app", &credential("app", None, NOW, 1), NOW).unwrap_err();
    assert!(matches!(e, ModuleError::KeyFilePermissions(_)) && e.is_config(), "{e}");
}

#[test]
fn a_replay_directory_open_to_others_is_refused() {
    let (_tmp, args) = setup();
    fs::set_permissions(&args.replay_dir, fs::Permissions::from_mode(0o733)).unwrap();
    let e = authenticate(&args, "app", &credential("app", None, NOW, 1), NOW).unwrap_err();
    assert!(matches!(e, ModuleError::ReplayDirPermissions(_)), "{e}");
}

#[test]
fn expired_replay_records_are_pruned_and_live_ones_kept() {
    let (_tmp, args) = setup();
    record_replay(&args.replay_dir, &[1; 16], NOW + 10, NOW).unwrap();
    record_replay(&args.replay_dir, &[2; 16], NOW + 100, NOW).unwrap();
    // At NOW + 50 the first record has passed its not_after; the second is kept.
    record_replay(&args.replay_dir, &[3; 16], NOW + 110, NOW + 50).unwrap();
    let mut names: Vec<_> = fs::read_dir(&args.replay_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names.len(), 2);
    assert!(matches!(record_replay(&args.replay_dir, &[2; 16], NOW + 100, NOW + 50), Err(ModuleError::Replayed)));
}

#[test]
fn a_malformed_key_file_is_a_configuration_error() {
    let (_tmp, args) = setup();
    fs::write(&args.key_file, "not a key\n").unwrap();
    let e = authenticate(&args, "app", &credential("app", None, NOW, 1), NOW).unwrap_err();
    assert!(matches!(e, ModuleError::KeyFile { .. }) && e.is_config(), "{e}");
}
