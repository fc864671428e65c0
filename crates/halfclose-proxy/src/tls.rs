//! HTTPS listeners: their certificates, loaded from PEM files with the
//! config (at start and on each reload) and chosen by SNI, and the acceptor
//! that offers HTTP/2 and HTTP/1.1 by ALPN; and the client config of `probe`
//! for https:// URLs.
//!
//! Imports nothing of the crate: `config` (the certificates) and `probe`
//! (the client config) import it; `conn` gets the acceptor as a value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, ServerConfig, crypto::ring};

/// A certificate chain and its key, PEM files, and the line of the config
/// that names them.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) line: Option<usize>,
}

/// A listener's certificates: the one whose names match the client's SNI,
/// else the first (also for clients that send no SNI, as nginx's default
/// server does). Loaded again with the config on reload, as a new value:
/// connections made with the old ones go on.
pub(crate) struct Certificates {
    provider: Arc<CryptoProvider>,
    entries: Vec<Entry>,
}

struct Entry {
    /// The certificate's DNS names, lower case; `*.example.com` as is.
    names: Vec<String>,
    path: PathBuf,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("certificates", &self.describe())
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads each pair; an error is one line naming the file, with the
    /// line of the config that names it.
    pub(crate) fn load(pairs: &[CertFiles]) -> Result<Arc<Self>, (Option<usize>, String)> {
        let provider = Arc::new(ring::default_provider());
        let mut entries = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let (key, names) =
                load(&pair.cert, &pair.key, &provider).map_err(|e| (pair.line, e))?;
            entries.push(Entry {
                names,
                path: pair.cert.clone(),
                key: Arc::new(key),
            });
        }
        if entries.is_empty() {
            return Err((None, "no certificate".into()));
        }
        Ok(Arc::new(Certificates { provider, entries }))
    }

    /// `FILE (name, name)` for each certificate.
    pub(crate) fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{} ({})", e.path.display(), e.names.join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The certificate files, for messages.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().map(|e| e.path.as_path())
    }

    /// A TLS acceptor serving these certificates, offering `h2` (when
    /// `http2`) and `http/1.1`.
    pub(crate) fn acceptor(self: &Arc<Self>, http2: bool) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            // As in `rustls::ServerConfig::builder`: ring supports them.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = match http2 {
            true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        TlsAcceptor::from(Arc::new(config))
    }

    /// The certificate for SNI `name`: one that names it exactly, else one
    /// whose wildcard covers it (one label, as TLS clients check), else the
    /// first.
    fn choose(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let found = name.and_then(|name| {
            let name = name.to_ascii_lowercase();
            let wild = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            self.entries
                .iter()
                .find(|e| e.names.contains(&name))
                .or_else(|| {
                    let wild = wild.as_ref()?;
                    self.entries.iter().find(|e| e.names.contains(wild))
                })
        });
        &found.unwrap_or(&self.entries[0]).key
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).clone())
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

/// The certified key of a pair of PEM files, and the certificate's DNS names.
fn load(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
    };
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "certificate {}: no PEM certificate in it",
            cert.display()
        ));
    };
    let names = match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee.valid_dns_names().map(str::to_ascii_lowercase).collect(),
        Err(e) => return Err(format!("certificate {}: {e}", cert.display())),
    };
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("key {}: no usable PEM private key: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        format!(
            "certificate {} with key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((certified, names))
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

    fn pair(cert: &Path, key: &Path) -> Vec<CertFiles> {
        vec![CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            line: Some(3),
        }]
    }

    #[test]
    fn loads_a_pair_and_names_the_file_on_errors() {
        let dir = scratch("load");
        let pair_a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &pair_a.cert.pem());
        let key = write(&dir, "key.pem", &pair_a.signing_key.serialize_pem());
        let wrong_key = write(&dir, "other.pem", &other.signing_key.serialize_pem());
        let junk = write(&dir, "junk.pem", "not pem at all");

        let c = Certificates::load(&pair(&cert, &key)).unwrap();
        assert_eq!(c.describe(), format!("{} (localhost)", cert.display()));

        let (line, e) = Certificates::load(&pair(&dir.join("missing.pem"), &key)).unwrap_err();
        assert_eq!(line, Some(3));
        assert!(e.starts_with("cannot read certificate"), "{e}");
        let (_, e) = Certificates::load(&pair(&junk, &key)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let (_, e) = Certificates::load(&pair(&cert, &junk)).unwrap_err();
        assert!(e.starts_with("key "), "{e}");
        let (_, e) = Certificates::load(&pair(&cert, &wrong_key)).unwrap_err();
        assert!(e.contains("cert.pem") && !e.contains('\n'), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sni_chooses_by_name_then_wildcard_then_the_first() {
        let dir = scratch("sni");
        let mut pairs = Vec::new();
        for (i, names) in [vec!["a.test"], vec!["b.test", "*.w.test"]]
            .into_iter()
            .enumerate()
        {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            let p = rcgen::generate_simple_self_signed(names).unwrap();
            let cert = write(&dir, &format!("{i}.pem"), &p.cert.pem());
            let key = write(
                &dir,
                &format!("{i}-key.pem"),
                &p.signing_key.serialize_pem(),
            );
            pairs.extend(pair(&cert, &key));
        }
        let c = Certificates::load(&pairs).unwrap();
        let which = |name: Option<&str>| {
            let chosen = c.choose(name);
            c.entries
                .iter()
                .position(|e| Arc::ptr_eq(&e.key, chosen))
                .unwrap()
        };
        assert_eq!(which(Some("a.test")), 0);
        assert_eq!(which(Some("B.TEST")), 1);
        assert_eq!(which(Some("x.w.test")), 1);
        assert_eq!(which(Some("y.x.w.test")), 0, "a wildcard covers one label");
        assert_eq!(which(Some("unknown.test")), 0);
        assert_eq!(which(None), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
