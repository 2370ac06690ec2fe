//! The TLS certificate the listener serves, re-read on SIGHUP: renewing a certificate
//! (certbot, cert-manager) needs a reload, not a restart. The listener's rustls
//! configuration asks [`CertificateFiles`] for the current certificate on every
//! handshake, so a reload takes effect for the next connection and open connections
//! keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate file cannot be opened or holds no PEM.
    #[error("cannot read TLS certificate {}: {source}", path.display())]
    ReadCert {
        /// `tls_cert`.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate in the file is not valid PEM.
    #[error("invalid TLS certificate {}: {source}", path.display())]
    InvalidCert {
        /// `tls_cert`.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("TLS certificate {} holds no certificate", path.display())]
    NoCert {
        /// `tls_cert`.
        path: PathBuf,
    },
    /// The key file cannot be read or holds no private key.
    #[error("cannot read TLS key {}: {source}", path.display())]
    ReadKey {
        /// `tls_key`.
        path: PathBuf,
        /// The PEM reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// The crypto provider offers no safe protocol version (a build problem).
    #[error(transparent)]
    Provider(rustls::Error),
    /// The key is not the certificate's, or of a kind rustls does not take.
    #[error("TLS certificate and key do not fit together: {0}")]
    Mismatch(rustls::Error),
}

/// The certificate and key files and what was last read from them.
#[derive(Debug)]
pub struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl CertificateFiles {
    /// Reads both files; fails if either is unreadable or they do not fit together.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let current = read(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: ArcSwap::from_pointee(current),
        }))
    }

    /// Reads the files again and serves them from the next TLS handshake on. On any
    /// error the certificate served so far stays, so a half-written renewal never
    /// takes the listener down.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let fresh = read(&self.cert, &self.key, &self.provider)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// The listener's acceptor: HTTP/1.1 over TLS 1.2/1.3, certificate from `self`.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Provider)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsSetupError::ReadCert { path: cert.to_owned(), source })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsSetupError::InvalidCert { path: cert.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCert { path: cert.to_owned() });
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsSetupError::ReadKey { path: key.to_owned(), source })?;
    CertifiedKey::from_der(certs, key, provider).map_err(TlsSetupError::Mismatch)
}
