//! TLS as the [`DefaultClient`](crate::DefaultClient) speaks it to `https`
//! upstreams: rustls with the ring provider, the bundled web PKI roots or a
//! CA bundle of the user's. [`client_config`] hands the same settings to
//! programs that open TLS connections of their own to the same servers (a
//! health prober, a custom connector) and should trust exactly what the
//! proxy trusts. At the bottom of the crate: imports nothing of it.

use std::sync::Arc;

use proxy_core::ProxyError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// The trust anchors of a custom CA bundle, and the bundle's certificates
/// themselves (for [`Pinned`]).
#[derive(Debug)]
pub(crate) struct CustomCa {
    roots: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
}

/// Reads a PEM CA bundle.
pub(crate) fn ca_from_pem(pem: &[u8]) -> Result<CustomCa, ProxyError> {
    let bad = |e: &dyn std::fmt::Display| {
        ProxyError::invalid_upstream(format!("upstream CA bundle: {e}"))
    };
    let mut roots = RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(&e))?;
        roots.add(cert.clone()).map_err(|e| bad(&e))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(CustomCa {
        roots: Arc::new(roots),
        certs,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `ca` (or, without it, the bundled web PKI
/// roots), offering `alpn`. The ring provider is named here rather than
/// taken from the process default, so another crate's choice cannot change
/// or break it.
pub(crate) fn config_for(ca: Option<&CustomCa>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // As in `rustls::ClientConfig::builder`: ring supports them.
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let mut config = match ca {
        None => builder
            .with_root_certificates(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth(),
        Some(ca) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(ca.roots.clone(), provider())
                .build()
                // Only fails without roots, and `ca_from_pem` ensures some.
                .expect("a non-empty root store");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    webpki,
                    certs: ca.certs.clone(),
                }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Web PKI verification against a custom CA bundle, which also accepts an
/// upstream whose certificate is itself in the bundle though it is marked
/// as a CA: the self-signed certificates `openssl req -x509` and Go's
/// `httptest` make. Go accepts them the same way. The name is still
/// checked, and the dates are (webpki checks them before the CA flag).
#[derive(Debug)]
struct Pinned {
    webpki: Arc<WebPkiServerVerifier>,
    certs: Vec<CertificateDer<'static>>,
}

fn is_ca_used_as_end_entity(e: &Error) -> bool {
    match e {
        Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A rustls client config trusting the CA certificates in `ca_pem` (a PEM
/// bundle; the upstream's own certificate in it is trusted even when
/// marked as a CA, see [`Builder::upstream_ca_pem`](crate::Builder::upstream_ca_pem)),
/// or the bundled web PKI roots without it; offering `alpn`. It uses the
/// ring provider, whatever the process default.
///
/// ```
/// let config = proxy_tower::tls::client_config(None, &[b"http/1.1"])?;
/// let connector = tokio_rustls::TlsConnector::from(config);
/// # let _ = connector; Ok::<(), proxy_tower::ProxyError>(())
/// ```
pub fn client_config(
    ca_pem: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
    let ca = ca_pem.map(ca_from_pem).transpose()?;
    Ok(config_for(ca.as_ref(), alpn))
}
