//! How onetrip reaches PostgreSQL: the URL (with `sslmode` read by onetrip, not
//! by the driver, because the driver knows no certificate checks), TLS through
//! rustls, the password from the URL or `PGPASSWORD` only, and the URL shown to
//! operators with its password removed. Also the mapping of driver errors onto
//! [`StoreError`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

use crate::store::StoreError;

/// How long a connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before the store counts as down.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connections in the pool: enough for concurrent OTP checks, few enough for a
/// default `max_connections` of 100 shared by several replicas.
pub(crate) const POOL_SIZE: usize = 16;

/// Transport security to PostgreSQL. libpq's `prefer` (TLS when offered, silently
/// plain otherwise) and `require` (TLS without checking whose certificate it is)
/// protect against nothing an attacker on the path cannot undo, so onetrip reads
/// `require` as `verify-full` and refuses `prefer` and `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP or a Unix socket: for a loopback or socket connection only.
    Disable,
    /// TLS, the certificate chain checked against the roots and the host name against it.
    VerifyFull,
}

/// A parsed PostgreSQL URL: the driver's configuration and what onetrip read itself.
pub(crate) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: TlsMode,
    /// PEM file of the roots to trust instead of the public web roots (`sslrootcert`).
    pub root_cert: Option<String>,
    /// The URL without its password, for operators.
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.shown).field("tls", &self.tls).finish()
    }
}

/// Parses `postgres://user[:password]@host[:port]/db?sslmode=...`; without a
/// password in the URL, `PGPASSWORD` gives it.
pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    parse_with(url, std::env::var("PGPASSWORD").ok())
}

/// [`parse`], with the environment's password given.
fn parse_with(url: &str, env_password: Option<String>) -> Result<Target, StoreError> {
    let shown = redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::Config(format!("the store URL {shown} must start with postgres:// or postgresql://")));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut tls = None;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", mode)) => {
                tls = Some(match mode {
                    "disable" => TlsMode::Disable,
                    "require" | "verify-ca" | "verify-full" => TlsMode::VerifyFull,
                    other => {
                        return Err(StoreError::Config(format!(
                            "sslmode={other} in {shown} is not supported: use sslmode=verify-full (TLS with the \
                             server's certificate checked; `require` means the same here) or sslmode=disable \
                             (loopback or Unix socket only)"
                        )))
                    }
                })
            }
            Some(("sslrootcert", path)) => {
                root_cert = Some(
                    percent_encoding::percent_decode_str(path)
                        .decode_utf8()
                        .map_err(|_| StoreError::Config(format!("sslrootcert in {shown} is not UTF-8")))?
                        .into_owned(),
                )
            }
            _ => rest.push(pair),
        }
    }
    let driver_url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    // The driver's message names the option at fault, never the URL or its password.
    let mut config = tokio_postgres::Config::from_str(&driver_url)
        .map_err(|e| StoreError::Config(format!("cannot read the store URL {shown}: {e}")))?;
    let tls = tls.unwrap_or(TlsMode::VerifyFull);
    config.ssl_mode(match tls {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::VerifyFull => SslMode::Require,
    });
    if config.get_password().is_none() {
        if let Some(password) = env_password {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("onetrip");
    Ok(Target { config, tls, root_cert, shown })
}

/// `url` without its password (userinfo or `password=` parameter), for logs and messages.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            // The userinfo ends at the last '@' before the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let kept: Vec<String> = query
            .split('&')
            .map(|p| if p.starts_with("password=") { "password=***".to_owned() } else { p.to_owned() })
            .collect();
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

/// A pool of connections to `target`. Connections are made on demand (so a server
/// can start its pool while PostgreSQL is still down), and a connection whose socket
/// closed is discarded when it comes back rather than handed out again.
pub(crate) fn pool(target: &Target) -> Result<Pool, StoreError> {
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match target.tls {
        TlsMode::Disable => Manager::from_config(target.config.clone(), tokio_postgres::NoTls, manager_config),
        TlsMode::VerifyFull => {
            Manager::from_config(target.config.clone(), tls_connector(target.root_cert.as_deref())?, manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(1)))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))
}

/// The rustls connector: the public web roots, or only the roots in `root_cert`.
pub(crate) fn tls_connector(root_cert: Option<&str>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| StoreError::Config(format!("cannot read sslrootcert {path}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| StoreError::Config(format!("cannot read sslrootcert {path}: {e}")))?;
                roots.add(cert).map_err(|e| StoreError::Config(format!("sslrootcert {path}: {e}")))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A driver error as a store error: a refused login or a missing database is the
/// operator's to fix ([`StoreError::Config`]); anything else means the store cannot
/// be used now and nothing was committed ([`StoreError::Unavailable`]).
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 28: invalid authorization; 3D000: no such database.
        if code.starts_with("28") || code == "3D000" {
            return StoreError::Config(format!("PostgreSQL refused the connection: {}", db.message()));
        }
        return StoreError::Unavailable(format!("PostgreSQL: {} ({code})", db.message()));
    }
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// A pool error as a store error (see [`db_error`]).
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => StoreError::Unavailable(format!("no PostgreSQL connection: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_shown_url() {
        assert_eq!(
            redact_url("postgres://onetrip:s3cret@db.example:5432/onetrip?sslmode=verify-full"),
            "postgres://onetrip:***@db.example:5432/onetrip?sslmode=verify-full"
        );
        assert_eq!(redact_url("postgres://u:p@ss@h/d"), "postgres://u:***@h/d", "an '@' inside the password");
        assert_eq!(redact_url("postgres://h/d?user=u&password=pw&x=1"), "postgres://h/d?user=u&password=***&x=1");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        let target = parse("postgres://u:hunter2@127.0.0.1:5/d?sslmode=disable").expect("parse");
        assert!(!format!("{target:?}").contains("hunter2"));
        assert!(!target.shown.contains("hunter2"));
    }

    #[test]
    fn the_password_comes_from_the_url_else_from_pgpassword() {
        let password = |url: &str, env: Option<&str>| {
            parse_with(url, env.map(str::to_owned)).expect("parse").config.get_password().map(<[u8]>::to_vec)
        };
        assert_eq!(password("postgres://u@h/d", Some("env-pw")), Some(b"env-pw".to_vec()));
        assert_eq!(password("postgres://u:url-pw@h/d", Some("env-pw")), Some(b"url-pw".to_vec()), "the URL wins");
        assert_eq!(password("postgres://u@h/d", None), None);
    }

    #[test]
    fn sslmode_is_verify_full_unless_disabled_and_prefer_is_refused() {
        let mode = |url: &str| parse(url).map(|t| t.tls);
        assert_eq!(mode("postgres://h/d").expect("default"), TlsMode::VerifyFull);
        assert_eq!(mode("postgres://h/d?sslmode=require").expect("require"), TlsMode::VerifyFull);
        assert_eq!(mode("postgres://h/d?sslmode=verify-full").expect("verify-full"), TlsMode::VerifyFull);
        assert_eq!(mode("postgresql://h/d?sslmode=disable").expect("disable"), TlsMode::Disable);
        for refused in ["prefer", "allow", "bogus"] {
            let url = format!("postgres://u:pw@h/d?sslmode={refused}");
            match mode(&url) {
                Err(StoreError::Config(m)) => assert!(m.contains(refused) && !m.contains("pw@"), "{m}"),
                other => panic!("sslmode={refused}: {other:?}"),
            }
        }
        assert!(matches!(mode("mysql://h/d"), Err(StoreError::Config(_))));
        assert!(matches!(mode("postgres://h/d?nonsense=1"), Err(StoreError::Config(_))));
    }

    #[test]
    fn verify_full_reads_a_private_root_or_says_why_not() {
        assert!(tls_connector(None).is_ok());
        match tls_connector(Some("/nonexistent/ca.pem")) {
            Err(StoreError::Config(m)) => assert!(m.contains("/nonexistent/ca.pem"), "{m}"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a missing root file must be refused"),
        }
    }
}
