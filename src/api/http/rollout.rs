//! The rollout routes: a canary's state and steering, a shadow's report
//! and steering, and a model's capacity answer.

use super::json as tensor_json;
use super::{AppState, json_reply, optional_json};
use crate::error::{Error, Result};
use crate::repository::capacity::{METHOD, ModelCapacity};
use crate::repository::shadow::{Comparison, Diff, Latency};
use crate::repository::{CanaryAction, PromoteTo, ShadowAction};
use crate::security::audit;
use crate::server::State;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State as Shared};
use axum::response::Response;
use serde_json::{Value, json};

/// `GET /v2/repository/models/{m}/canary`: the canary as it runs.
pub(super) async fn canary_status(Shared(state): Shared<AppState>, Path(model): Path<String>) -> Response {
    json_reply(canary_json(&state, &model))
}

fn canary_json(state: &State, model: &str) -> Result<Value> {
    Ok(match state.repository.canary(model)? {
        None => json!({ "model": model, "canary": null }),
        Some(c) => json!({
            "model": model,
            "stable_version": c.stable.to_string(),
            "canary_version": c.canary.to_string(),
            "weight": c.weight(),
            "rolled_back": c.rolled_back(),
        }),
    })
}

/// `POST /v2/repository/models/{m}/canary` with `{"weight": 0-100}`,
/// `{"action": "rollback"}` (weight 0) or `{"action": "promote"}`; answers
/// the canary as it now runs.
pub(super) async fn steer_canary(
    Shared(state): Shared<AppState>,
    Path(model): Path<String>,
    extensions: axum::http::Extensions,
    body: Body,
) -> Response {
    let mut action_name = "canary";
    let result = async {
        let request = optional_json(&state, body).await?;
        let action = match (request.get("action").and_then(Value::as_str), request.get("weight")) {
            (Some("promote"), None) => CanaryAction::Promote,
            (Some("rollback"), None) => CanaryAction::Weight(0),
            (None, Some(weight)) => CanaryAction::Weight(
                weight
                    .as_u64()
                    .and_then(|w| u32::try_from(w).ok())
                    .ok_or_else(|| Error::invalid(format!("'weight' must be a whole number 0-100, got {weight}")))?,
            ),
            _ => {
                return Err(Error::invalid(
                    "send {\"weight\": 0-100}, {\"action\": \"rollback\"} or {\"action\": \"promote\"}",
                ));
            }
        };
        action_name = match action {
            CanaryAction::Promote => "canary promote",
            CanaryAction::Weight(0) => "canary rollback",
            CanaryAction::Weight(_) => "canary weight",
        };
        let steered = state.repository.steer_canary(&model, action);
        audit::record(action_name, &model, &extensions, steered.as_ref().map(|_| ()));
        steered?;
        canary_json(&state, &model)
    }
    .await;
    audited_reply(result, action_name, "canary", &model, &extensions)
}

/// `GET /v2/models/{m}/shadow` (and `/v2/repository/models/{m}/shadow`):
/// the shadow's comparison with the serving version.
pub(super) async fn shadow_status(Shared(state): Shared<AppState>, Path(model): Path<String>) -> Response {
    json_reply(shadow_json(&state, &model))
}

fn shadow_json(state: &State, model: &str) -> Result<Value> {
    let Some(found) = state.repository.shadow(model)? else {
        return Ok(json!({ "model": model, "shadow": null }));
    };
    let shadow = &found.shadow;
    let Comparison { counts, outputs, serving_latency, shadow_latency, examples, last_error } = shadow.report();
    let diff = |d: &Diff| {
        json!({
            "rows": d.rows,
            "differing_rows": d.differing,
            "agreement": d.agreement(),
            "max_abs_difference": d.max_abs,
            "mean_abs_difference": d.mean_abs(),
            "top1_agreement": d.top1_agreement(),
            "mismatched_rows": d.mismatched,
        })
    };
    let latency = |l: &Latency| {
        let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        json!({ "samples": l.samples, "p50_ms": ms(l.p50), "p99_ms": ms(l.p99) })
    };
    let outputs: Vec<Value> = outputs
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "datatype": o.datatype.wire_name(),
                "tolerance": { "abs": o.tolerance.abs, "rel": o.tolerance.rel },
                "window": diff(&o.window),
                "total": diff(&o.total),
            })
        })
        .collect();
    let examples: Vec<Value> = examples
        .iter()
        .map(|e| {
            let mut example = json!({
                "id": e.id,
                "sequence": e.sequence,
                "output": e.output,
                "differing_rows": e.differing_rows,
                "rows": e.rows,
                "max_abs_difference": e.max_abs,
            });
            if let Some(inputs) = &e.inputs {
                example["inputs"] = inputs
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "datatype": t.datatype.wire_name(),
                            "shape": t.shape,
                            "data": tensor_json::encode(t),
                        })
                    })
                    .collect();
            }
            example
        })
        .collect();
    let promote = shadow.settings.promote.map(|p| {
        json!({
            "rows": p.rows,
            "agreement": p.agreement,
            "latency_ratio": p.latency_ratio,
            "canary_weight": p.weight,
        })
    });
    Ok(json!({
        "model": model,
        "shadow_version": shadow.version.to_string(),
        "serving_version": found.serving.map(|v| v.to_string()),
        "running": found.running,
        "percent": shadow.percent(),
        "queue": { "size": shadow.settings.queue, "in_flight": shadow.in_flight() },
        "requests": {
            "mirrored": counts.mirrored,
            "compared": counts.compared,
            "shadow_errors": counts.shadow_errors,
            "serving_errors": counts.serving_errors,
            "shed": {
                "pressure": counts.shed_pressure,
                "queue": counts.shed_queue,
                "busy": counts.shed_busy,
                "admission": counts.shed_admission,
            },
        },
        "latency": { "serving": latency(&serving_latency), "shadow": latency(&shadow_latency) },
        "outputs": outputs,
        "disagreements": examples,
        "last_shadow_error": last_error,
        "promote": promote,
    }))
}

/// `POST /v2/repository/models/{m}/shadow` with
/// `{"action": "set", "version": N, "percent": 0-100}`, `{"action": "stop"}`,
/// `{"action": "promote", "to": "canary", "weight": 1-100}` or
/// `{"action": "promote", "to": "stable"}`; answers the shadow's report.
pub(super) async fn steer_shadow(
    Shared(state): Shared<AppState>,
    Path(model): Path<String>,
    extensions: axum::http::Extensions,
    body: Body,
) -> Response {
    let mut action_name = "shadow";
    let result = async {
        let request = optional_json(&state, body).await?;
        let action = shadow_action(&request)?;
        action_name = match action {
            ShadowAction::Set { .. } => "shadow set",
            ShadowAction::Stop => "shadow stop",
            ShadowAction::Promote(PromoteTo::Canary(_)) => "shadow promote canary",
            ShadowAction::Promote(PromoteTo::Stable) => "shadow promote stable",
        };
        let steered = state.repository.steer_shadow(&model, action, "operator").await;
        audit::record(action_name, &model, &extensions, steered.as_ref().map(|_| ()));
        steered?;
        shadow_json(&state, &model)
    }
    .await;
    audited_reply(result, action_name, "shadow", &model, &extensions)
}

/// The answer to an operator's action, which was audited once it named
/// one; a request refused before it did (a bad body) is audited here,
/// under the route's own name.
fn audited_reply(
    result: Result<Value>,
    action: &str,
    route: &str,
    model: &str,
    extensions: &axum::http::Extensions,
) -> Response {
    if let Err(e) = &result
        && action == route
    {
        audit::record(route, model, extensions, Err(e));
    }
    json_reply(result)
}

const SHADOW_USAGE: &str = "send {\"action\": \"set\", \"version\": N, \"percent\": 0-100}, {\"action\": \"stop\"}, \
     {\"action\": \"promote\", \"to\": \"canary\", \"weight\": 1-100} or {\"action\": \"promote\", \"to\": \"stable\"}";

fn shadow_action(request: &Value) -> Result<ShadowAction> {
    let whole = |key: &str, default: Option<u64>| -> Result<u64> {
        match request.get(key) {
            None => default.ok_or_else(|| Error::invalid(format!("'{key}' is missing: {SHADOW_USAGE}"))),
            Some(value) => {
                value.as_u64().ok_or_else(|| Error::invalid(format!("'{key}' must be a whole number, got {value}")))
            }
        }
    };
    let small = |key: &str, default: Option<u64>| -> Result<u32> {
        let value = whole(key, default)?;
        u32::try_from(value).map_err(|_| Error::invalid(format!("'{key}' {value} is out of range")))
    };
    match (request.get("action").and_then(Value::as_str), request.get("to").and_then(Value::as_str)) {
        (Some("set"), None) => {
            let version = whole("version", None)?;
            let version =
                i64::try_from(version).map_err(|_| Error::invalid(format!("version {version} is out of range")))?;
            Ok(ShadowAction::Set { version, percent: small("percent", Some(100))? })
        }
        (Some("stop"), None) => Ok(ShadowAction::Stop),
        (Some("promote"), Some("canary")) => Ok(ShadowAction::Promote(PromoteTo::Canary(small("weight", Some(10))?))),
        (Some("promote"), Some("stable")) => Ok(ShadowAction::Promote(PromoteTo::Stable)),
        _ => Err(Error::invalid(SHADOW_USAGE)),
    }
}

/// `GET /v2/models/{m}/capacity[?target_rps=R]`: what each version
/// sustains within its latency SLO, and the replicas a target rate needs.
pub(super) async fn capacity(
    Shared(state): Shared<AppState>,
    Path(model): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    // The simulation takes milliseconds of CPU: off the runtime's workers.
    let result = tokio::task::spawn_blocking(move || {
        let target = target_rps(query.as_deref())?;
        let answer = state.repository.capacity(&model)?;
        Ok(capacity_json(&model, &answer, target))
    })
    .await
    .unwrap_or_else(|e| Err(Error::Internal(format!("the capacity answer failed: {e}"))));
    json_reply(result)
}

fn target_rps(query: Option<&str>) -> Result<Option<f64>> {
    let mut target = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_rps", value)) => {
                let rate = value.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
                target = Some(rate.ok_or_else(|| {
                    Error::invalid(format!(
                        "target_rps must be a positive number of requests per second, got '{value}'"
                    ))
                })?);
            }
            _ => return Err(Error::invalid(format!("unknown query parameter '{pair}' (the one known is target_rps)"))),
        }
    }
    Ok(target)
}

fn capacity_json(model: &str, answer: &ModelCapacity, target: Option<f64>) -> Value {
    let versions: Vec<Value> = answer
        .versions
        .iter()
        .map(|v| {
            let max = v.answer.requests_per_second;
            json!({
                "version": v.version,
                "max_rps": max,
                "limited_by": v.answer.limited_by,
                "batch_size": v.answer.batch,
                "batch_size_aimed": v.batch_size_aimed,
                "saturation_rps": v.answer.saturation,
                "latency_target_ms": v.latency_target.as_secs_f64() * 1e3,
                "instances": v.instances,
                "intra_op_threads": v.intra_op_threads,
                "current_rps": v.current_rate,
                "utilisation": if max > 0.0 { v.current_rate / max } else { 0.0 },
                "headroom_rps": (max - v.current_rate).max(0.0),
                "rows_per_request": v.rows_per_request,
                "overhead_us_per_request": v.overhead.as_secs_f64() * 1e6,
                "overhead_source": v.overhead_source.as_str(),
                "cores_per_execution": v.cores_per_execution,
                "replicas_for_target": target.and_then(|t| v.replicas_for(t)),
            })
        })
        .collect();
    json!({
        "model": model,
        "method": METHOD,
        "cores": answer.cores,
        "overhead_mean_us_per_request": answer.overhead_mean.map(|d| d.as_secs_f64() * 1e6),
        "target_rps": target,
        "versions": versions,
    })
}
