//! Client certificates on the webhook port, for `/audit`. The TLS handshake asks for
//! one (hinting the audit CA) and checks that the client holds its key; whether it was
//! signed by the audit CA is checked per request ([`ClientCa::verifies`]), so a client
//! presenting a certificate of another CA — an API server that authenticates to
//! admission webhooks with one — is served as a client without one, never refused at
//! the handshake.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Request;
use futures::future::BoxFuture;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tower::Service;
use tower::util::Either;

use crate::tls::TlsError;

/// The CA whose client certificates authenticate a request.
#[derive(Debug, Clone)]
pub struct ClientCa(Arc<dyn ClientCertVerifier>);

impl ClientCa {
    /// The CA certificates of `pem`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let bad = |message: String| TlsError::Pem {
            what: "client CA".into(),
            message,
        };
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block found".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))?;
        Ok(ClientCa(verifier))
    }

    /// Whether `chain` (end entity first) is a client certificate this CA signed, valid
    /// now.
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.0
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok()
    }

    /// What the handshake runs: asks for a certificate, checks the client's signature
    /// with it, leaves its issuer to [`ClientCa::verifies`].
    pub(crate) fn handshake(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Deferred(self.0.clone()))
    }
}

/// Delegates all but the chain check to the CA's verifier.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Checked per request by `ClientCa::verifies`; nothing trusts it before.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A request extension: the certificate chain the connection presented, end entity
/// first. The client proved it holds the key; who signed it is not checked yet.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// Wraps a TLS acceptor; connections that presented a certificate get a service that
/// adds [`PeerCertificates`] to each request, others the service unchanged.
#[derive(Debug, Clone)]
pub struct ClientCertAcceptor<A>(pub A);

impl<A, I, S> axum_server::accept::Accept<I, S> for ClientCertAcceptor<A>
where
    A: axum_server::accept::Accept<I, S, Stream = TlsStream<TcpStream>>,
    A::Future: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = TlsStream<TcpStream>;
    type Service = Either<A::Service, Marked<A::Service>>;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.0.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let chain: Option<Arc<[CertificateDer<'static>]>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .filter(|chain| !chain.is_empty())
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
            let service = match chain {
                Some(chain) => Either::Right(Marked(service, PeerCertificates(chain))),
                None => Either::Left(service),
            };
            Ok((stream, service))
        })
    }
}

/// A service that adds the connection's [`PeerCertificates`] to every request.
#[derive(Debug, Clone)]
pub struct Marked<S>(S, PeerCertificates);

impl<S, B> Service<Request<B>> for Marked<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.1.clone());
        self.0.call(request)
    }
}
