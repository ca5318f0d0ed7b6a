//! Serving certificates: TLS 1.2+ with aws-lc-rs, a certificate that can be swapped
//! while serving (file reload, later rotation), and a self-signed CA for local mode.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{what}: {message}")]
    Pem {
        /// Which input (file name or "certificate").
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The serving certificate, swappable while connections are served.
pub struct CertStore(ArcSwap<CertifiedKey>);

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// A store serving `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore(ArcSwap::from_pointee(key)))
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A rustls server configuration: TLS 1.3 and 1.2 only, aws-lc-rs, ALPN h2 and http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    build_server_config(store, None)
}

/// [`server_config`] that also asks clients for a certificate, hinting `client_ca`,
/// and checks the client holds its key; requests of such connections carry it
/// ([`crate::client_cert::PeerCertificates`]) for `/audit` to check against the CA. A
/// client without one is served as before.
pub fn server_config_with_client_ca(
    store: Arc<CertStore>,
    client_ca: &crate::client_cert::ClientCa,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    build_server_config(store, Some(client_ca.handshake()))
}

fn build_server_config(
    store: Arc<CertStore>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a certified key from a PEM chain and PEM private key, checking they match.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let pem = |what: &str, message: String| TlsError::Pem {
        what: what.into(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("certificate", format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem("certificate", "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| pem("private key", format!("no usable key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, &aws_lc_rs::default_provider())?;
    Ok(key)
}

/// A certificate and key read from files, reloaded whenever their contents change
/// (including Secret volume updates, which swap a symlink).
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    loaded: (Vec<u8>, Vec<u8>),
}

impl FileCert {
    /// Reads and validates the pair; fails before anything binds.
    pub fn load(cert: &Path, key: &Path) -> Result<(Self, CertifiedKey), TlsError> {
        let loaded = (read(cert)?, read(key)?);
        let certified = certified_key(&loaded.0, &loaded.1)?;
        Ok((
            FileCert {
                cert: cert.to_owned(),
                key: key.to_owned(),
                loaded,
            },
            certified,
        ))
    }

    /// Re-reads the files; returns a new key when their contents changed and are valid.
    pub fn reload(&mut self) -> Result<Option<CertifiedKey>, TlsError> {
        let now = (read(&self.cert)?, read(&self.key)?);
        if now == self.loaded {
            return Ok(None);
        }
        let certified = certified_key(&now.0, &now.1)?;
        self.loaded = now;
        Ok(Some(certified))
    }

    /// Polls the files every `interval` and swaps changed certificates into `store`;
    /// a bad pair is logged and the current certificate keeps serving.
    pub async fn watch(mut self, store: Arc<CertStore>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(Some(key)) => {
                    store.replace(key);
                    tracing::info!(cert = %self.cert.display(), "reloaded the serving certificate");
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "serving certificate not reloaded; the current one keeps serving")
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A CA and a serving certificate it signed, in PEM.
#[derive(Debug, Clone)]
pub struct GeneratedCerts {
    /// The CA certificate clients trust.
    pub ca_pem: String,
    /// The serving certificate chain.
    pub cert_pem: String,
    /// The serving key.
    pub key_pem: String,
}

/// Generates a CA and a serving certificate for `names` (DNS names or IP addresses),
/// valid from an hour ago for a year.
pub fn generate(names: &[String]) -> Result<GeneratedCerts, TlsError> {
    let now = std::time::SystemTime::now();
    generate_valid(
        names,
        now - Duration::from_secs(3600),
        now + Duration::from_secs(365 * 86400),
    )
}

/// Generates a CA and a serving certificate for `names`, both valid in the given window.
pub fn generate_valid(
    names: &[String],
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> Result<GeneratedCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let (not_before, not_after) = (
        time::OffsetDateTime::from(not_before),
        time::OffsetDateTime::from(not_after),
    );
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.not_before = not_before;
    ca.not_after = not_after;
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("portcullis", String::as_str),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(GeneratedCerts {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes generated certificates as `ca.crt`, `tls.crt` and `tls.key` under `dir`
/// (the key readable by the owner only) and returns the CA's path.
pub fn write_generated(certs: &GeneratedCerts, dir: &Path) -> Result<PathBuf, TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, content) in [
        ("ca.crt", &certs.ca_pem),
        ("tls.crt", &certs.cert_pem),
        ("tls.key", &certs.key_pem),
    ] {
        let path = dir.join(name);
        write_private(&path, content.as_bytes()).map_err(io(&path))?;
    }
    Ok(dir.join("ca.crt"))
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}
