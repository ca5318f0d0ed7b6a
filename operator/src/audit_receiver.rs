//! The audit-log receiver's setup: the token or client CA `/audit` requires, the state
//! and the sink's spool in the cache directory, the periodic save, and `GET /findings`
//! on the metrics port.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_webhook::auditlog::{AuditService, Settings};
use portcullis_webhook::client_cert::ClientCa;

use crate::cli::AuditArgs;

/// How often the detections' state is saved (and once more at shutdown).
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// The receiver, when `--audit-token-file` or `--audit-client-ca-file` is given, with
/// the client CA (the webhook's TLS asks for certificates of it).
pub fn service(
    args: &AuditArgs,
    cache_dir: Option<&Path>,
) -> anyhow::Result<Option<(Arc<AuditService>, Option<ClientCa>)>> {
    let token = match &args.audit_token_file {
        None => None,
        Some(file) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("reading --audit-token-file {}", file.display()))?
                .trim()
                .to_owned();
            if token.len() < 16 {
                anyhow::bail!(
                    "--audit-token-file {}: the token must be at least 16 characters",
                    file.display()
                );
            }
            Some(token)
        }
    };
    let client_ca = match &args.audit_client_ca_file {
        None => None,
        Some(file) => {
            let pem = std::fs::read(file)
                .with_context(|| format!("reading --audit-client-ca-file {}", file.display()))?;
            Some(
                ClientCa::from_pem(&pem)
                    .with_context(|| format!("--audit-client-ca-file {}", file.display()))?,
            )
        }
    };
    if token.is_none() && client_ca.is_none() {
        return Ok(None);
    }
    let service = AuditService::new(token, client_ca.clone(), Settings::default(), cache_dir)
        .context("reading the audit detections' saved state and the sink's spool")?;
    Ok(Some((Arc::new(service), client_ca)))
}

/// Saves the state every [`SAVE_EVERY`] until the process stops.
pub async fn save_periodically(service: Arc<AuditService>) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    loop {
        tick.tick().await;
        if let Err(error) = service.save() {
            tracing::warn!(%error, "could not save the audit detections' state");
        }
    }
}

/// `GET /findings?since=`: the findings after a sequence number or time, oldest first.
pub async fn findings(
    service: Arc<AuditService>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match service.findings_since(query.get("since").map(String::as_str)) {
        Ok(found) => {
            let next = found.last().map(|n| n.sequence);
            axum::Json(serde_json::json!({"next": next, "findings": found})).into_response()
        }
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}
