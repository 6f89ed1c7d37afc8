//! The one auth layer every route and RPC passes, on every port, before any
//! other work is done for the request (decompression, routing, decoding):
//! find the call's API group (groups.rs; none ⇒ refused), apply Triton's
//! header restrictions for that group, then the API keys. The fronts wrap
//! their service in `Guard` and say how a refusal is spelt on their wire.

use super::groups::{Group, Groups, Port, Table};
use super::keys::Keys;
use arc_swap::ArcSwap;
use bytes::Buf;
use futures::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Triton's `--grpc-restricted-protocol` / `--http-restricted-api`:
/// `<groups>:<header>=<value>` — calls in those groups must carry the header
/// with that value.
#[derive(Debug, Clone)]
pub struct Restriction {
    groups: Groups,
    header: HeaderName,
    value: Vec<u8>,
}

impl Restriction {
    pub fn parse(spec: &str) -> Result<Restriction, String> {
        let (groups, pair) = spec.split_once(':').ok_or_else(|| {
            format!("{spec:?}: expected <groups>:<header>=<value>, e.g. model-repository:admin-key=s3cret")
        })?;
        let (header, value) =
            pair.split_once('=').ok_or_else(|| format!("{spec:?}: expected <header>=<value> after the colon"))?;
        let groups = Groups::parse(groups).map_err(|e| format!("{spec:?}: {e}"))?;
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("{spec:?}: {header:?} is not a valid header name"))?;
        if value.is_empty() {
            return Err(format!("{spec:?}: the value is empty"));
        }
        Ok(Restriction { groups, header, value: value.as_bytes().to_vec() })
    }

    /// Parses every flag of one port; a group may be restricted once only.
    pub fn parse_all(specs: &[String]) -> Result<Vec<Restriction>, String> {
        let mut restrictions: Vec<Restriction> = Vec::new();
        for spec in specs {
            let restriction = Restriction::parse(spec)?;
            if restrictions.iter().any(|r| r.groups.overlaps(restriction.groups)) {
                return Err(format!("{spec:?}: a group in it is already restricted by another flag"));
            }
            restrictions.push(restriction);
        }
        Ok(restrictions)
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Nothing on this port serves the path: 404 / UNIMPLEMENTED.
    NoRoute(String),
    /// No credential, or one that is not known: 401 / UNAUTHENTICATED.
    Unauthenticated { message: String, bearer: bool },
    /// A known key without the call's group: 403 / PERMISSION_DENIED.
    PermissionDenied(String),
}

impl Denial {
    /// The `reason` label of ferroserve_auth_denied_total.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoRoute(_) => "no_route",
            Denial::Unauthenticated { .. } => "unauthenticated",
            Denial::PermissionDenied(_) => "permission_denied",
        }
    }
}

/// Who made a call that passed, put in the request's extensions for the
/// audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The ID of the API key that was presented (never the key).
    pub key_id: Option<Arc<str>>,
}

/// The policy: API keys (when --auth-keys is set) and Triton's restrictions.
pub struct Auth {
    table: Table,
    /// None when --auth-keys is not set: keys are not asked for.
    keys: Option<ArcSwap<Keys>>,
    /// Groups called without a key (--auth-open-groups); health always.
    open: Groups,
    grpc: Vec<Restriction>,
    http: Vec<Restriction>,
}

impl Auth {
    pub fn new(keys: Option<Keys>, mut open: Groups, grpc: Vec<Restriction>, http: Vec<Restriction>) -> Auth {
        open.insert(Group::Health);
        Auth { table: Table::new(), keys: keys.map(ArcSwap::from_pointee), open, grpc, http }
    }

    /// No keys and no restrictions: every call that has a route passes.
    pub fn open() -> Auth {
        Auth::new(None, Groups::default(), Vec::new(), Vec::new())
    }

    /// Publishes a reloaded key file; calls already checked keep their answer.
    pub fn replace_keys(&self, keys: Keys) {
        if let Some(current) = &self.keys {
            current.store(Arc::new(keys));
        }
    }

    pub fn check(&self, port: Port, path: &str, headers: &HeaderMap) -> Result<Principal, Denial> {
        let group = self.table.classify(port, path).ok_or_else(|| Denial::NoRoute(path.to_string()))?;
        let restrictions = match port {
            Port::Grpc => &self.grpc[..],
            Port::Http => &self.http[..],
            Port::Metrics => &[],
        };
        for restriction in restrictions.iter().filter(|r| r.groups.contains(group)) {
            let presented = headers.get(&restriction.header).map(|v| v.as_bytes()).unwrap_or_default();
            if !bool::from(presented.ct_eq(&restriction.value[..])) {
                return Err(Denial::Unauthenticated {
                    message: format!(
                        "the {group} API needs the header {} with the configured value",
                        restriction.header
                    ),
                    bearer: false,
                });
            }
        }
        // Probes must work without a key, and the groups opened to callers
        // that cannot send one.
        let Some(keys) = self.keys.as_ref().filter(|_| !self.open.contains(group)) else {
            return Ok(Principal::default());
        };
        let Some(token) = bearer(headers) else {
            return Err(Denial::Unauthenticated {
                message: format!("the {group} API needs an API key: send `authorization: Bearer <key>`"),
                bearer: true,
            });
        };
        let keys = keys.load();
        let key = keys
            .find(token)
            .ok_or_else(|| Denial::Unauthenticated { message: "the API key is not known".into(), bearer: true })?;
        if !key.groups.contains(group) {
            return Err(Denial::PermissionDenied(format!("API key {} may not call the {group} API", key.id)));
        }
        Ok(Principal { key_id: Some(key.id.clone()) })
    }
}

/// The key in `authorization: Bearer <key>` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// A front's service behind the auth check; `refuse` spells a denial on the
/// front's wire (api/ owns that, this layer owns the decision).
pub struct Guard<S, B> {
    auth: Arc<Auth>,
    port: Port,
    refuse: fn(Denial) -> Response<B>,
    inner: S,
}

impl<S: Clone, B> Clone for Guard<S, B> {
    fn clone(&self) -> Self {
        Guard { auth: self.auth.clone(), port: self.port, refuse: self.refuse, inner: self.inner.clone() }
    }
}

impl<S, B> Guard<S, B> {
    pub fn new(auth: Arc<Auth>, port: Port, refuse: fn(Denial) -> Response<B>, inner: S) -> Self {
        Guard { auth, port, refuse, inner }
    }
}

/// A refused request's body is read, this much of it for this long at
/// most, before the refusal goes out: a client still sending (curl over
/// HTTP/2 and TLS) takes the stream reset that follows an answer to an
/// unread body for a failed request, and never shows the 401.
const DRAIN_BYTES: usize = 64 << 10;
const DRAIN_TIME: Duration = Duration::from_millis(500);

async fn drain<R: http_body::Body>(body: R) {
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    let reading = async {
        while read < DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.remaining()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
}

impl<S, R, B> tower::Service<Request<R>> for Guard<S, B>
where
    S: tower::Service<Request<R>, Response = Response<B>>,
    S::Error: Send + 'static,
    R: http_body::Body + Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Result<Response<B>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<R>) -> Self::Future {
        match self.auth.check(self.port, request.uri().path(), request.headers()) {
            Ok(principal) => {
                if principal.key_id.is_some() {
                    request.extensions_mut().insert(principal);
                }
                Either::Right(self.inner.call(request))
            }
            Err(denial) => {
                let port = self.port.name();
                metrics::counter!(crate::telemetry::AUTH_DENIED_TOTAL, "port" => port, "reason" => denial.reason())
                    .increment(1);
                let refusal = (self.refuse)(denial);
                let body = request.into_body();
                Either::Left(Box::pin(async move {
                    if !body.is_end_stream() {
                        drain(body).await;
                    }
                    Ok(refusal)
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::keys::{hex, sha256};

    fn keys() -> Keys {
        let line = |id: &str, groups: &str, key: &str| format!("{id} {groups} {}\n", hex(&sha256(key.as_bytes())));
        Keys::parse(&(line("app", "inference,metadata", "app-key") + &line("ops", "*", "ops-key"))).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn keys_decide_by_group() {
        let auth = Auth::new(Some(keys()), Groups::default(), vec![], vec![]);
        let infer = "/v2/models/mlp/infer";
        let load = "/v2/repository/models/mlp/load";
        let app = headers(&[("authorization", "Bearer app-key")]);
        assert_eq!(auth.check(Port::Http, infer, &app).unwrap().key_id.as_deref(), Some("app"));
        assert_eq!(
            auth.check(Port::Http, load, &app),
            Err(Denial::PermissionDenied("API key app may not call the model-repository API".into()))
        );
        let ops = headers(&[("authorization", "bearer ops-key")]);
        assert!(auth.check(Port::Http, load, &ops).is_ok());
        assert!(auth.check(Port::Metrics, "/metrics", &ops).is_ok());
        assert!(matches!(auth.check(Port::Metrics, "/metrics", &app), Err(Denial::PermissionDenied(_))));
        for missing in [
            headers(&[]),
            headers(&[("authorization", "Basic b3BzOm9wcw==")]),
            headers(&[("authorization", "Bearer ")]),
        ] {
            assert!(matches!(
                auth.check(Port::Http, infer, &missing),
                Err(Denial::Unauthenticated { bearer: true, .. })
            ));
        }
        let unknown = headers(&[("authorization", "Bearer app-key2")]);
        assert!(matches!(auth.check(Port::Http, infer, &unknown), Err(Denial::Unauthenticated { .. })));
    }

    #[test]
    fn health_stays_open_and_unknown_paths_are_refused() {
        let auth = Auth::new(Some(keys()), Groups::default(), vec![], vec![]);
        assert_eq!(auth.check(Port::Http, "/v2/health/ready", &headers(&[])), Ok(Principal::default()));
        assert!(auth.check(Port::Grpc, "/grpc.health.v1.Health/Check", &headers(&[])).is_ok());
        let ops = headers(&[("authorization", "Bearer ops-key")]);
        assert!(matches!(auth.check(Port::Http, "/v2/secret", &ops), Err(Denial::NoRoute(_))));
        assert!(matches!(
            auth.check(Port::Grpc, "/inference.GRPCInferenceService/Debug", &ops),
            Err(Denial::NoRoute(_))
        ));
        assert!(matches!(Auth::open().check(Port::Http, "/v2/secret", &ops), Err(Denial::NoRoute(_))));
    }

    #[test]
    fn open_groups_need_no_key_and_the_rest_still_do() {
        let auth = Auth::new(Some(keys()), Groups::parse("metadata,model-config").unwrap(), vec![], vec![]);
        assert_eq!(auth.check(Port::Http, "/v2/models/mlp", &headers(&[])), Ok(Principal::default()));
        assert!(auth.check(Port::Grpc, "/inference.GRPCInferenceService/ModelConfig", &headers(&[])).is_ok());
        assert!(auth.check(Port::Http, "/v2/health/live", &headers(&[])).is_ok(), "health stays open");
        let refused = auth.check(Port::Http, "/v2/models/mlp/infer", &headers(&[]));
        assert!(matches!(refused, Err(Denial::Unauthenticated { bearer: true, .. })), "{refused:?}");
    }

    #[test]
    fn triton_restrictions_need_their_header() {
        let grpc = Restriction::parse_all(&["model-repository,health:admin-key=abc".into()]).unwrap();
        let auth = Auth::new(None, Groups::default(), grpc, vec![]);
        let load = "/inference.GRPCInferenceService/RepositoryModelLoad";
        assert!(auth.check(Port::Grpc, load, &headers(&[("admin-key", "abc")])).is_ok());
        for wrong in [headers(&[]), headers(&[("admin-key", "abd")]), headers(&[("admin-key", "ab")])] {
            assert!(matches!(auth.check(Port::Grpc, load, &wrong), Err(Denial::Unauthenticated { bearer: false, .. })));
        }
        // Named groups only, and only on the port the flag is for.
        assert!(auth.check(Port::Grpc, "/inference.GRPCInferenceService/ModelInfer", &headers(&[])).is_ok());
        assert!(auth.check(Port::Http, "/v2/repository/models/m/load", &headers(&[])).is_ok());
        assert!(matches!(
            auth.check(Port::Grpc, "/inference.GRPCInferenceService/ServerLive", &headers(&[])),
            Err(Denial::Unauthenticated { .. })
        ));
    }

    #[test]
    fn restriction_flags_are_checked() {
        for bad in ["inference", "inference:key", "admin:key=v", "inference:bad header=v", "inference:key="] {
            assert!(Restriction::parse(bad).is_err(), "{bad}");
        }
        let twice = ["inference:a=1".to_string(), "metadata,inference:b=2".to_string()];
        assert!(Restriction::parse_all(&twice).unwrap_err().contains("already restricted"));
    }
}
