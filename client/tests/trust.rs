//! Trust decisions against in-test servers on 127.0.0.1: a pin mismatch and a changed
//! identity after trust on first use are hard errors naming both fingerprints, raised
//! before any handshake is sent.

mod common;

use common::fake::FakeServer;
use common::{new_key, now, TestServer};
use onetrip_client::{Client, Error};

#[tokio::test]
async fn a_pin_mismatch_is_refused_before_any_handshake() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let other = FakeServer::new(&key, now()).fingerprint();
    let client = Client::builder().server(&server.url).api_key(&key_str).pin(other).build().unwrap();
    let err = client.token().await.unwrap_err();
    assert!(
        matches!(err, Error::ServerIdentityChanged { expected, found } if expected == other && found == server.fingerprint),
        "{err}"
    );
    let shown = err.to_string();
    assert!(shown.contains(&other.to_string()) && shown.contains(&server.fingerprint.to_string()), "{shown}");
    assert_eq!((server.documents(), server.auths()), (1, 0));
}

#[tokio::test]
async fn trust_on_first_use_remembers_then_refuses_another_identity() {
    let (key, key_str) = new_key();
    let a = TestServer::start(&key).await;
    let b = TestServer::start(&key).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("onetrip/known_server");
    let tofu = |url: &str| Client::builder().server(url).api_key(&key_str).trust_on_first_use(&file).build().unwrap();

    tofu(&a.url).token().await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), a.fingerprint.to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The same server again (a new process, say): trusted from the file.
    tofu(&a.url).token().await.unwrap();
    assert_eq!(a.auths(), 2);

    // Another identity at the address: a hard error, nothing sent, file unchanged.
    let err = tofu(&b.url).token().await.unwrap_err();
    assert!(
        matches!(err, Error::ServerIdentityChanged { expected, found } if expected == a.fingerprint && found == b.fingerprint),
        "{err}"
    );
    assert!(err.to_string().contains("trust-on-first-use file"), "actionable: {err}");
    assert_eq!(b.auths(), 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), a.fingerprint.to_string());
}

#[tokio::test]
async fn a_corrupted_trust_file_fails_the_build() {
    let (_, key_str) = new_key();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("known_server");
    std::fs::write(&file, "SHA256:garbage").unwrap();
    let err =
        Client::builder().server("http://127.0.0.1:1").api_key(&key_str).trust_on_first_use(&file).build().unwrap_err();
    assert!(matches!(err, Error::TrustFile { .. }), "{err}");
}
