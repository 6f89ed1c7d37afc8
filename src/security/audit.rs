//! The audit log: one line per model-repository or canary action (load,
//! unload, canary weight, promote, rollback) with who asked — the API key's
//! ID (never the key), the client address and, with mTLS, the certificate
//! subject — and how it ended. Target `ferroserve::audit`, so it can be
//! filtered apart (RUST_LOG=ferroserve::audit=info).

use super::Peer;
use super::auth::Principal;
use std::fmt::Display;

/// Logs one admin action and its outcome; `extensions` are the request's,
/// where the accept loop put the `Peer` and the auth layer the `Principal`.
pub fn record<E: Display>(action: &str, model: &str, extensions: &http::Extensions, outcome: Result<(), &E>) {
    let (peer, principal) = (extensions.get::<Peer>(), extensions.get::<Principal>());
    let key_id = principal.and_then(|p| p.key_id.as_deref()).unwrap_or("-");
    let client = peer.map_or_else(|| "-".to_string(), |p| p.address.to_string());
    let subject = peer.and_then(|p| p.subject.as_deref()).unwrap_or("-");
    match outcome {
        Ok(()) => {
            tracing::info!(target: "ferroserve::audit", action, model, key_id, client, subject, outcome = "ok", "admin action")
        }
        Err(error) => tracing::warn!(
            target: "ferroserve::audit",
            action,
            model,
            key_id,
            client,
            subject,
            outcome = "refused",
            %error,
            "admin action"
        ),
    }
}
