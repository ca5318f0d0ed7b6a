//! The serving certificate from `--tls-cert-file`/`--tls-key-file`, or a generated one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_webhook::tls::{
    CertStore, FileCert, certified_key, generate, server_config, server_config_with_client_ca,
    write_generated,
};

use portcullis_webhook::client_cert::ClientCa;

use crate::cli::TlsArgs;
use crate::supervise::Essentials;

/// How often certificate files are checked for changes.
const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The server configuration for `store`; with `client_ca`, clients are asked for a
/// certificate of it (for `/audit`).
pub fn config(
    store: Arc<CertStore>,
    client_ca: Option<&ClientCa>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(match client_ca {
        Some(ca) => server_config_with_client_ca(store, ca)?,
        None => server_config(store)?,
    })
}

/// The certificate from `--tls-cert-file`/`--tls-key-file`, validated now and re-read
/// (an essential task) when the files change.
pub fn from_files(
    args: &TlsArgs,
    client_ca: Option<&ClientCa>,
    essentials: &mut Essentials,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        anyhow::bail!("--tls-cert-file and --tls-key-file go together");
    };
    let (files, certified) =
        FileCert::load(cert, key).context("loading the serving certificate")?;
    let store = CertStore::new(certified);
    essentials.spawn(
        "the certificate file watch",
        files.watch(store.clone(), CERT_RELOAD_INTERVAL),
    );
    config(store, client_ca)
}

/// Local mode's TLS configuration: the files when given, else a generated CA and
/// certificate written to `--self-signed-dir`.
pub fn serving_tls(
    args: &TlsArgs,
    listen: SocketAddr,
    essentials: &mut Essentials,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let store = match &args.tls_cert_file {
        Some(_) => return from_files(args, None, essentials),
        _ => {
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
                names.push(listen.ip().to_string());
            }
            names.extend(args.self_signed_name.iter().cloned());
            let certs = generate(&names).context("generating a self-signed certificate")?;
            let ca = write_generated(&certs, &args.self_signed_dir)
                .context("writing the generated certificate")?;
            tracing::info!(ca = %ca.display(), "no --tls-cert-file given: generated a self-signed CA and serving certificate");
            eprintln!(
                "portcullis: self-signed CA written to {} (curl --cacert {0} …)",
                ca.display()
            );
            CertStore::new(certified_key(
                certs.cert_pem.as_bytes(),
                certs.key_pem.as_bytes(),
            )?)
        }
    };
    Ok(server_config(store)?)
}
