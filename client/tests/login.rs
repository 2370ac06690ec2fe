//! Database login credentials from the client: `Client::login_credential` and the
//! blocking one make a credential the database's `TokenVerifier::verify_login`
//! accepts, stamped with server time, from the cached token; `Debug` hides it.

mod common;

use std::sync::Arc;

use common::{new_key, now, TestServer};
use onetrip_client::{BlockingClient, Error, LoginError, LOGIN_CREDENTIAL_MAX_LEN};

#[tokio::test]
async fn a_login_credential_verifies_for_its_user_and_database_only() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let client = server.client(&key_str).scopes(["db:read"]).build().unwrap();
    let cred = client.login_credential("app_reader", Some("orders")).await.unwrap();
    assert_eq!(cred.as_str().len(), LOGIN_CREDENTIAL_MAX_LEN);
    assert_eq!(format!("{cred:?}"), "LoginCredential([redacted])");
    let verifier = server.state.fake.lock().unwrap().verifier();
    let ok = verifier.verify_login(cred.as_str(), "app_reader", Some("orders"), now()).unwrap();
    assert_eq!((ok.claims.api_key_id, ok.claims.scopes()), (key.id(), "db:read"));
    assert_eq!(verifier.verify_login(cred.as_str(), "admin", Some("orders"), now()).unwrap_err(), LoginError::BadProof);
    // A second credential reuses the cached token but is a different credential.
    let again = client.login_credential("app_reader", None).await.unwrap();
    assert_ne!(again.as_str(), cred.as_str());
    assert!(verifier.verify_login(again.as_str(), "app_reader", None, now()).is_ok());
    assert_eq!(client.handshakes(), 1);
}

#[tokio::test]
async fn the_credential_carries_server_time_when_the_local_clock_is_off() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    // This machine's clock runs 5 minutes ahead; the client learns the offset from
    // the server's clock_skew answer and stamps credentials in server time.
    let client = server.client(&key_str).clock(Arc::new(|| now() + 300)).build().unwrap();
    let cred = client.login_credential("app_reader", None).await.unwrap();
    assert_eq!(server.auths(), 2, "one clock_skew answer, one grant");
    let verifier = server.state.fake.lock().unwrap().verifier();
    assert!(verifier.verify_login(cred.as_str(), "app_reader", None, now()).is_ok());
}

#[tokio::test]
async fn an_overlong_name_is_an_invalid_request() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let client = server.client(&key_str).build().unwrap();
    let err = client.login_credential(&"u".repeat(256), None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(m) if m.contains("255")), "{err}");
}

#[test]
fn the_blocking_client_makes_login_credentials() {
    let (key, key_str) = new_key();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start(&key));
    let client = BlockingClient::build(server.client(&key_str)).unwrap();
    let cred = client.login_credential("app_reader", Some("orders")).unwrap();
    let verifier = server.state.fake.lock().unwrap().verifier();
    assert!(verifier.verify_login(cred.as_str(), "app_reader", Some("orders"), now()).is_ok());
    drop(client);
    drop(server);
}
