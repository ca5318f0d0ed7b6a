//! Test support (feature `testing`): the webhook on an ephemeral loopback port with a
//! generated CA, a minimal HTTPS client that trusts that CA, and simulated scanners.

pub mod process;
pub mod registry;
pub mod scanners;

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::oneshot;

use crate::client_cert::ClientCa;
use crate::server::{self, AppState};
use crate::tls::{
    CertStore, GeneratedCerts, certified_key, generate, server_config, server_config_with_client_ca,
};

/// A running webhook; dropping it shuts the server down.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificates.
    pub certs: GeneratedCerts,
    /// The certificate store, for rotation tests.
    pub store: Arc<CertStore>,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    /// Starts the webhook router for `state` on 127.0.0.1 with a fresh CA.
    pub async fn start(state: AppState) -> std::io::Result<Self> {
        Self::start_router(server::router(state)).await
    }

    /// [`TestServer::start`], asking clients for certificates (`client_ca` hinted).
    pub async fn start_verifying_clients(
        state: AppState,
        client_ca: &ClientCa,
    ) -> std::io::Result<Self> {
        Self::serve(server::router(state), Some(client_ca)).await
    }

    /// Serves any router (a simulated scanner, say) over HTTPS on 127.0.0.1 with a
    /// fresh CA whose certificate is `certs.ca_pem`.
    pub async fn start_router(router: axum::Router) -> std::io::Result<Self> {
        Self::serve(router, None).await
    }

    async fn serve(router: axum::Router, client_ca: Option<&ClientCa>) -> std::io::Result<Self> {
        let certs =
            generate(&["localhost".into(), "127.0.0.1".into()]).map_err(std::io::Error::other)?;
        let key = certified_key(certs.cert_pem.as_bytes(), certs.key_pem.as_bytes())
            .map_err(std::io::Error::other)?;
        let store = CertStore::new(key);
        let tls = match client_ca {
            Some(ca) => server_config_with_client_ca(store.clone(), ca),
            None => server_config(store.clone()),
        }
        .map_err(std::io::Error::other)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, tls, router, async {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            addr,
            certs,
            store,
            _stop: stop,
        })
    }

    /// A client trusting this server's CA.
    pub fn client(&self) -> std::io::Result<TestClient> {
        TestClient::new(
            self.addr,
            &self.certs.ca_pem,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }
}

/// One TLS connection and full handshake per request; enough for tests, and it
/// exercises certificate selection every time.
pub struct TestClient {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

/// A response: status, body, and the DER of the certificate the server presented.
pub struct TestResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The server's leaf certificate.
    pub server_cert: Vec<u8>,
}

impl TestClient {
    /// A client for `addr` trusting `ca_pem`, offering only `versions`.
    pub fn new(
        addr: SocketAddr,
        ca_pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<Self> {
        let roots = roots(ca_pem)?;
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(versions)
                .map_err(std::io::Error::other)?
                .with_root_certificates(roots)
                .with_no_client_auth();
        // A full handshake every time: resumed sessions skip the certificate check.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TestClient {
            addr,
            config: Arc::new(config),
        })
    }

    /// A client for `addr` trusting `ca_pem` that presents the certificate `cert_pem`
    /// with its key (as the API server's webhook audit backend can).
    pub fn with_identity(
        addr: SocketAddr,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> std::io::Result<Self> {
        let roots = roots(ca_pem)?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(std::io::Error::other)?;
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(std::io::Error::other)?;
        Ok(TestClient {
            addr,
            config: Arc::new(config),
        })
    }

    /// A client for `addr` that accepts any certificate, as the kubelet's HTTPS probes
    /// do.
    pub fn unverified(addr: SocketAddr) -> std::io::Result<Self> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(TestClient {
            addr,
            config: Arc::new(config),
        })
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> std::io::Result<TestResponse> {
        self.request("POST", path, body).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> std::io::Result<TestResponse> {
        self.request("GET", path, Vec::new()).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> std::io::Result<TestResponse> {
        let io_error = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let server_name = ServerName::try_from("localhost").map_err(|e| io_error(&e))?;
        let tls = connector.connect(server_name, tcp).await?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| io_error(&e))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| io_error(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| io_error(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| io_error(&e))?
            .to_bytes()
            .to_vec();
        Ok(TestResponse {
            status,
            body,
            server_cert,
        })
    }
}

/// The certificates of `ca_pem` as trust roots.
fn roots(ca_pem: &str) -> std::io::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    Ok(roots)
}

/// Accepts every server certificate (signatures still checked); probes only.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A CA and a client certificate it signed for `name` (extended key usage clientAuth).
pub fn client_identity(name: &str) -> Result<crate::tls::GeneratedCerts, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "audit clients CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(crate::tls::GeneratedCerts {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
