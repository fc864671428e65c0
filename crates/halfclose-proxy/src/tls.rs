//! The HTTPS listener: its certificate, loaded from PEM files at start and
//! loaded again on SIGHUP, and the acceptor that offers HTTP/2 and HTTP/1.1 by
//! ALPN; and the client config of `probe` for https:// URLs.
//!
//! Imports nothing of the crate: `serve` and `signals` (the certificate)
//! and `probe` (the client config) import it; `conn` gets the acceptor as a
//! value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, ServerConfig, crypto::ring};

/// The certificate every new handshake gets; replaced by [`reload`](Self::reload)
/// while connections made with the old one go on.
pub(crate) struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Loads the certificate chain and key; the error is one line naming the file.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let provider = Arc::new(ring::default_provider());
        let current = load(cert, key, &provider)?;
        Ok(Arc::new(Certificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again; on error the certificate in use stays.
    // SIGHUP, which calls it, is Unix-only.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(load(&self.cert, &self.key, &self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate file, for messages.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A TLS acceptor serving this certificate, offering `h2` and `http/1.1`.
    pub(crate) fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            // As in `rustls::ServerConfig::builder`: ring supports them.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A client config for `probe https://...`: what the proxy itself trusts
/// (the CA bundle in the file `ca`, or the bundled web PKI roots), offering
/// `alpn`.
pub(crate) fn client_config(ca: Option<&Path>, alpn: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let pem = match ca {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    proxy_tower::tls::client_config(pem.as_deref(), &[alpn]).map_err(|e| match ca {
        Some(path) => format!("--ca {}: {e}", path.display()),
        None => e.to_string(),
    })
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let read = |path: &Path, flag: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
    };
    let cert_pem = read(cert, "--tls-cert")?;
    let key_pem = read(key, "--tls-key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--tls-key {}: no usable PEM private key: {e}",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        format!(
            "--tls-cert {} with --tls-key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("halfclose-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_a_pair_and_names_the_file_on_errors() {
        let dir = scratch("load");
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &pair.cert.pem());
        let key = write(&dir, "key.pem", &pair.signing_key.serialize_pem());
        let wrong_key = write(&dir, "other.pem", &other.signing_key.serialize_pem());
        let junk = write(&dir, "junk.pem", "not pem at all");

        let c = Certificate::load(&cert, &key).unwrap();
        assert!(c.reload().is_ok());

        let e = Certificate::load(&dir.join("missing.pem"), &key).unwrap_err();
        assert!(e.starts_with("cannot read --tls-cert"), "{e}");
        let e = Certificate::load(&junk, &key).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = Certificate::load(&cert, &junk).unwrap_err();
        assert!(e.contains("--tls-key"), "{e}");
        let e = Certificate::load(&cert, &wrong_key).unwrap_err();
        assert!(e.contains("--tls-cert") && !e.contains('\n'), "{e}");

        // A failed reload keeps the certificate in use.
        std::fs::write(&cert, "garbage").unwrap();
        assert!(c.reload().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
