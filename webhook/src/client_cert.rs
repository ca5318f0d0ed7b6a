//! Client certificates on the webhook port: the TLS handshake verifies them (see
//! [`crate::tls::server_config_with_client_ca`]); the acceptor here marks every request
//! of a connection that presented a verified one with [`VerifiedClient`].

use std::io;

use std::task::{Context, Poll};

use axum::http::Request;
use futures::future::BoxFuture;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tower::Service;
use tower::util::Either;

/// A request extension: the connection presented a client certificate that the server
/// verified against its client CA.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedClient;

/// Wraps a TLS acceptor; connections with a verified client certificate get a service
/// that adds [`VerifiedClient`] to each request, others the service unchanged.
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
            // rustls reports peer certificates only after verifying them.
            let verified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty());
            let service = if verified {
                Either::Right(Marked(service))
            } else {
                Either::Left(service)
            };
            Ok((stream, service))
        })
    }
}

/// A service that adds [`VerifiedClient`] to every request.
#[derive(Debug, Clone)]
pub struct Marked<S>(S);

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
        request.extensions_mut().insert(VerifiedClient);
        self.0.call(request)
    }
}
