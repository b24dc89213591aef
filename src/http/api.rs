//! Routes and handlers. Each handler decodes its input, makes one registry call in
//! `spawn_blocking`, and renders the result; policy lives in the registry.

use super::metrics::{Gauges, Metrics};
use super::security::{Denied, Role};
use super::{json_response, text_response, ApiError, App, Request, Response};
use crate::clock;
use crate::ids;
use crate::policy::stale::LockState;
use crate::registry::{LeaseRequest, LockReport, RegistryError};
use crate::store::console as sql_console;
use crate::store::records::{EventKind, HistoryQuery};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::http::{Method, StatusCode};

/// Longest wait an acquire may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Index,
    Health,
    OpenApi,
    Metrics,
    LegacyStatus(String),
    LegacyEnsureCleared(String),
    LegacyForceClear(String),
    LegacyClearAll,
    List,
    OwnerStatus(String),
    Acquire(String, String),
    Renew(String),
    Release(String),
    Clear(String),
    ForceClear(String),
    Fence,
    History,
    Sql,
    Waiters,
    Reconcile,
    DemoStatus,
    DemoChat(String),
    DemoSimulate,
}

/// Path shape → (route, the one method it answers, the role it needs).
fn classify(segs: &[String]) -> Option<(Route, Method, Role)> {
    use Role::*;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let r = match s.as_slice() {
        [] => (Route::Index, Method::GET, Anyone),
        ["healthz"] => (Route::Health, Method::GET, Anyone),
        ["metrics"] => (Route::Metrics, Method::GET, User),
        ["get_lock_status", c] => (Route::LegacyStatus(c.to_string()), Method::GET, User),
        ["ensure_locks_cleared", c] => (
            Route::LegacyEnsureCleared(c.to_string()),
            Method::POST,
            User,
        ),
        ["force_clear_locks", c] => (Route::LegacyForceClear(c.to_string()), Method::POST, Admin),
        ["clear_locks"] => (Route::LegacyClearAll, Method::POST, Admin),
        ["api", "v1", "openapi.json"] => (Route::OpenApi, Method::GET, Anyone),
        ["api", "v1", "locks"] => (Route::List, Method::GET, User),
        ["api", "v1", "locks", o] => (Route::OwnerStatus(o.to_string()), Method::GET, User),
        ["api", "v1", "locks", o, "clear"] => (Route::Clear(o.to_string()), Method::POST, User),
        ["api", "v1", "locks", o, "force-clear"] => {
            (Route::ForceClear(o.to_string()), Method::POST, Admin)
        }
        ["api", "v1", "locks", o, f, "acquire"] => (
            Route::Acquire(o.to_string(), f.to_string()),
            Method::POST,
            User,
        ),
        ["api", "v1", "leases", id, "renew"] => (Route::Renew(id.to_string()), Method::POST, User),
        ["api", "v1", "leases", id] => (Route::Release(id.to_string()), Method::DELETE, User),
        ["api", "v1", "fence", "check"] => (Route::Fence, Method::POST, User),
        ["api", "v1", "history"] => (Route::History, Method::GET, User),
        ["api", "v1", "sql"] => (Route::Sql, Method::POST, Admin),
        ["api", "v1", "waiters"] => (Route::Waiters, Method::GET, User),
        ["api", "v1", "reconcile"] => (Route::Reconcile, Method::POST, Admin),
        ["demo", "status"] => (Route::DemoStatus, Method::GET, Anyone),
        ["demo", "chat", c] => (Route::DemoChat(c.to_string()), Method::POST, User),
        ["demo", "simulate"] => (Route::DemoSimulate, Method::POST, User),
        _ => return None,
    };
    Some(r)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one component; `plus_is_space` for query strings.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h * 16 + l),
                    _ => {
                        return Err(ApiError::bad_request(
                            "malformed percent-encoding in the URL",
                        ))
                    }
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the URL is not valid UTF-8"))
}

fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    if path.len() > 2048 {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the path is too long",
        ));
    }
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect()
}

/// Query parameters; each route names the keys it accepts and anything else is refused.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: &str, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut map = HashMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k, true)?;
            let v = percent_decode(v, true)?;
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {:?} (accepted: {})",
                    k.chars().take(40).collect::<String>(),
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {k:?} is given twice"
                )));
            }
        }
        Ok(Query(map))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    fn number<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    ApiError::bad_request(format!("query parameter {k} must be a whole number"))
                })
            })
            .transpose()
    }
}

/// Decodes a request target the way the router does (path segments, route, query
/// parameters and a JSON body of any of the route bodies), for fuzzing: it must never
/// panic, whatever the bytes.
pub fn fuzz_decode(path: &str, query: &str, body: &[u8]) {
    if let Ok(segs) = split_path(path) {
        let _ = classify(&segs);
    }
    let _ = Query::parse(
        query,
        &[
            "state",
            "owner_prefix",
            "limit",
            "cursor",
            "owner",
            "field",
            "since",
        ],
    );
    let _ = serde_json::from_slice::<AcquireBody>(body);
    let _ = serde_json::from_slice::<ClearBody>(body);
    let _ = serde_json::from_slice::<ForceBody>(body);
    let _ = serde_json::from_slice::<FenceBody>(body);
    let _ = serde_json::from_slice::<SqlBody>(body);
    let _ = serde_json::from_slice::<LegacyForceBody>(body);
}

fn denied(d: Denied) -> ApiError {
    match d {
        Denied::ForeignHost(h) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!("host {h:?} is not this service; add it with --allow-host if it is"),
        ),
        Denied::ForeignOrigin(o) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!("requests from origin {o:?} are not accepted"),
        ),
        Denied::Unauthenticated => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid token is needed (Authorization: Bearer TOKEN or X-Lockledger-Token)",
        ),
        Denied::NotAdmin => ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "this needs the admin token",
        ),
        Denied::NoJsonOrHeader => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "POST and DELETE need Content-Type: application/json or an X-Lockledger-Client header",
        ),
    }
}

/// The one mapping from registry errors to HTTP.
pub fn registry_error(e: RegistryError) -> ApiError {
    use crate::store::StoreError;
    let msg = e.to_string();
    match e {
        RegistryError::InvalidId(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", msg),
        RegistryError::BadRequest(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg),
        RegistryError::Busy { holder, .. } => {
            let mut err = ApiError::new(StatusCode::CONFLICT, "busy", msg);
            err.detail = Some(serde_json::json!({ "holder": holder }));
            err
        }
        RegistryError::TokenMismatch { current, .. } => {
            let mut err = ApiError::new(StatusCode::CONFLICT, "token_mismatch", msg);
            err.detail = Some(serde_json::json!({ "current_token": current }));
            err
        }
        RegistryError::NotClearable { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_clearable", msg)
        }
        RegistryError::NotHeld { .. } => ApiError::new(StatusCode::CONFLICT, "not_held", msg),
        RegistryError::LeaseGone { .. } | RegistryError::Revoked { .. } => {
            ApiError::new(StatusCode::GONE, "lease_gone", msg)
        }
        RegistryError::UnknownLease(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_lease", msg)
        }
        RegistryError::Store(StoreError::Busy) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy_database",
            "the database is busy; retry shortly",
        ),
        RegistryError::Store(_) | RegistryError::Flock(_) => {
            log::error!("internal error: {msg}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
        }
    }
}

/// Runs blocking work (database, locks, processes) off the async executor.
pub(super) async fn off_thread<R, F>(f: F) -> Result<R, ApiError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "a worker failed",
        )
    })
}

/// Runs one blocking registry call off the async executor and maps its error.
async fn blocking<R, F>(f: F) -> Result<R, ApiError>
where
    F: FnOnce() -> Result<R, RegistryError> + Send + 'static,
    R: Send + 'static,
{
    off_thread(f).await?.map_err(registry_error)
}

/// Decodes a JSON body; an empty body means "no options" where `T: Default`.
pub(super) fn optional_body<T: DeserializeOwned + Default>(req: &Request) -> Result<T, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not the JSON this route takes: {e}"),
        )
    })
}

/// A body that must be present.
pub(super) fn required_json<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "this route needs a JSON body",
        ));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not the JSON this route takes: {e}"),
        )
    })
}

fn actor(role: Role, req: &Request) -> String {
    let name: String = req
        .headers
        .get("x-lockledger-actor")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect();
    let role = match role {
        Role::Admin => "admin",
        Role::User => "user",
        Role::Anyone => "anonymous",
    };
    format!("{role}:{name}")
}

pub async fn handle(app: &Arc<App>, req: Request) -> Response {
    match dispatch(app, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
    app.policy.check_origin(&req.headers).map_err(denied)?;
    if req.method == Method::GET {
        let page = if req.path == "/" && super::ui::wants_html(&req.headers) {
            "/ui/"
        } else {
            req.path.as_str()
        };
        if let Some(resp) = super::ui::asset(page) {
            return Ok(resp);
        }
    }
    let segs = split_path(&req.path)?;
    let Some((route, method, needed)) = classify(&segs) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ));
    };
    if req.method != method {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this route takes {method} only"),
        )
        .into_response();
        if let Ok(v) = warp::http::HeaderValue::from_str(method.as_str()) {
            resp.headers_mut().insert("allow", v);
        }
        return Ok(resp);
    }
    let role = app.policy.authorize(&req.headers, needed).map_err(denied)?;
    if method == Method::POST || method == Method::DELETE {
        app.policy
            .check_state_change(&req.headers)
            .map_err(denied)?;
    }
    let no_query = |req: &Request| Query::parse(&req.query, &[]);
    match route {
        Route::Index => {
            no_query(&req)?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "service": "lockledger",
                    "version": env!("CARGO_PKG_VERSION"),
                    "api": "/api/v1/openapi.json",
                    "health": "/healthz",
                }),
            ))
        }
        Route::Health => health(app).await,
        Route::OpenApi => Ok(json_response(StatusCode::OK, &super::openapi::document())),
        Route::Metrics => metrics(app).await,
        Route::LegacyStatus(owner) => {
            no_query(&req)?;
            legacy_status(app, owner).await
        }
        Route::LegacyEnsureCleared(owner) => {
            no_query(&req)?;
            legacy_ensure_cleared(app, &req, owner, role).await
        }
        Route::LegacyForceClear(owner) => {
            no_query(&req)?;
            legacy_force_clear(app, &req, owner, role).await
        }
        Route::LegacyClearAll => {
            no_query(&req)?;
            clear_all(app, &req, role).await
        }
        Route::List => list(app, &req).await,
        Route::OwnerStatus(owner) => owner_status(app, &req, owner).await,
        Route::Acquire(owner, field) => acquire(app, &req, owner, field).await,
        Route::Renew(id) => {
            no_query(&req)?;
            renew(app, id).await
        }
        Route::Release(id) => {
            no_query(&req)?;
            release(app, id).await
        }
        Route::Clear(owner) => clear(app, &req, owner, role).await,
        Route::ForceClear(owner) => force_clear(app, &req, owner, role).await,
        Route::Fence => {
            no_query(&req)?;
            fence(app, &req).await
        }
        Route::History => history(app, &req).await,
        Route::Sql => {
            no_query(&req)?;
            sql(app, &req).await
        }
        Route::Waiters => {
            no_query(&req)?;
            let reg = app.registry.clone();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "waiters": reg.waiters() }),
            ))
        }
        Route::DemoStatus | Route::DemoChat(_) | Route::DemoSimulate if app.demo.is_none() => {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "demo mode is off (serve --demo)",
            ))
        }
        Route::DemoStatus => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"demo": true}),
        )),
        Route::DemoChat(owner) => {
            no_query(&req)?;
            super::demo::chat(app, &req, owner).await
        }
        Route::DemoSimulate => {
            no_query(&req)?;
            super::demo::simulate(app, &req).await
        }
        Route::Reconcile => {
            no_query(&req)?;
            let reg = app.registry.clone();
            let who = actor(role, &req);
            let report = blocking(move || reg.reconcile(&who)).await?;
            Metrics::inc(&app.metrics.reconciled, report.reconciled.len() as u64);
            Ok(json_response(StatusCode::OK, &report))
        }
    }
}

async fn health(app: &Arc<App>) -> Result<Response, ApiError> {
    let reg = app.registry.clone();
    let db_ok = blocking(move || {
        reg.history(&HistoryQuery {
            limit: 1,
            ..HistoryQuery::default()
        })
        .map(|_| ())
    })
    .await
    .is_ok();
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &serde_json::json!({
            "status": if db_ok { "ok" } else { "database unavailable" },
            "uptime_s": app.started.elapsed().as_secs(),
            "leases": app.registry.leases_held().len(),
            "waiting": app.registry.waiting_count(),
        }),
    ))
}

async fn metrics(app: &Arc<App>) -> Result<Response, ApiError> {
    let reg = app.registry.clone();
    let (held, stale) = blocking(move || reg.recorded_counts()).await?;
    let gauges = Gauges {
        held,
        stale,
        waiting: app.registry.waiting_count() as u64,
        leases: app.registry.leases_held().len() as u64,
    };
    Ok(text_response(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        app.metrics.render(gauges),
    ))
}

/// The lock a route names: owner and field from the path or body, namespace from the
/// query (`?namespace=`), validated.
fn lock_key(
    app: &App,
    req: &Request,
    owner: &str,
    field: &str,
) -> Result<crate::ids::LockKey, ApiError> {
    let q = Query::parse(&req.query, &["namespace"])?;
    app.registry
        .key(q.get("namespace"), owner, field)
        .map_err(registry_error)
}

fn namespace_param(q: &Query) -> Option<String> {
    q.get("namespace").map(str::to_string)
}

/// The chat app's status shape: legacy booleans plus the per-lock detail.
#[derive(Debug, Serialize)]
struct LegacyStatus {
    conversation_id: String,
    locks_status: BTreeMap<String, bool>,
    any_locked: bool,
    stale_locks: Vec<String>,
    can_cleanup: bool,
    locks: Vec<LockReport>,
}

async fn legacy_status(app: &Arc<App>, owner: String) -> Result<Response, ApiError> {
    let reg = app.registry.clone();
    let o = owner.clone();
    let status = blocking(move || reg.status(None, &o)).await?;
    let locks_status = status
        .locks
        .iter()
        .map(|l| (l.field.clone(), l.state != LockState::Free))
        .collect();
    let body = LegacyStatus {
        conversation_id: owner,
        locks_status,
        any_locked: status.locks.iter().any(|l| l.state != LockState::Free),
        stale_locks: status
            .locks
            .iter()
            .filter(|l| l.state == LockState::Stale)
            .map(|l| l.file.clone())
            .collect(),
        can_cleanup: status.locks.iter().any(|l| l.clearable),
        locks: status.locks,
    };
    Ok(json_response(StatusCode::OK, &body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    tokens: Option<BTreeMap<String, i64>>,
}

async fn legacy_ensure_cleared(
    app: &Arc<App>,
    req: &Request,
    owner: String,
    role: Role,
) -> Result<Response, ApiError> {
    let b: ClearBody = optional_body(req)?;
    let reg = app.registry.clone();
    let who = actor(role, req);
    let o = owner.clone();
    let out = blocking(move || reg.clear(None, &o, b.tokens, &who)).await?;
    Metrics::inc(&app.metrics.clears, out.cleared.len() as u64);
    let message = match (out.cleared.len(), out.skipped.len()) {
        (0, 0) => format!("no stuck locks on {owner}"),
        (n, 0) => format!("cleared {n} stuck lock(s) on {owner}"),
        (n, s) => format!("cleared {n} stuck lock(s) on {owner}; {s} lock(s) are held by live holders and were left alone"),
    };
    let skipped: Vec<serde_json::Value> = out
        .skipped
        .iter()
        .map(|s| serde_json::json!({"field": s.field, "file": s.file, "reason": s.reason, "pid": s.pid, "holder": s.holder}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "success": true,
            "cleared": out.cleared.iter().map(|c| c.file.clone()).collect::<Vec<_>>(),
            "skipped": skipped,
            "message": message,
        }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyForceBody {
    tokens: Option<BTreeMap<String, i64>>,
    reason: Option<String>,
}

async fn legacy_force_clear(
    app: &Arc<App>,
    req: &Request,
    owner: String,
    role: Role,
) -> Result<Response, ApiError> {
    let b: LegacyForceBody = optional_body(req)?;
    let Some(tokens) = b.tokens.filter(|t| !t.is_empty()) else {
        return Err(ApiError::bad_request(
            "a force clear needs the tokens you were shown: {\"tokens\": {\"messages\": 7}, \"reason\": \"...\"}",
        ));
    };
    let reason = b
        .reason
        .unwrap_or_else(|| "force clear from the Lock Status modal".into());
    let reg = app.registry.clone();
    let who = actor(role, req);
    let results = blocking(move || {
        let mut cleared = Vec::new();
        let mut failed = Vec::new();
        for (field, token) in tokens {
            let key = reg.key(None, &owner, &field)?;
            match reg.force_clear(&key, token, &reason, &who) {
                Ok(done) => cleared.push(done),
                Err(
                    e @ (RegistryError::InvalidId(_)
                    | RegistryError::Store(_)
                    | RegistryError::Flock(_)),
                ) => return Err(e),
                Err(e) => failed.push(serde_json::json!({"field": field, "reason": e.to_string()})),
            }
        }
        Ok((cleared, failed))
    })
    .await?;
    let (cleared, failed) = results;
    Metrics::inc(&app.metrics.force_clears, cleared.len() as u64);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "success": failed.is_empty(),
            "cleared": cleared.iter().map(|c| c.file.clone()).collect::<Vec<_>>(),
            "failed": failed,
            "details": cleared,
            "warning": "force-cleared locks may have been in use: their holders were revoked, and their writes are refused by fencing tokens from now on",
        }),
    ))
}

async fn clear_all(app: &Arc<App>, req: &Request, role: Role) -> Result<Response, ApiError> {
    let _: ClearBody = optional_body(req)?;
    let reg = app.registry.clone();
    let who = actor(role, req);
    let (cleared, skipped, owners) = blocking(move || {
        let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (page, next) = reg.list(Some(LockState::Stale), None, cursor, 1000)?;
            owners.extend(page.into_iter().map(|l| (l.namespace, l.owner)));
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        let mut cleared = Vec::new();
        let mut skipped = Vec::new();
        for (ns, owner) in &owners {
            let out = reg.clear(Some(ns), owner, None, &who)?;
            cleared.extend(out.cleared.into_iter().map(|c| c.file));
            skipped.extend(out.skipped);
        }
        Ok((cleared, skipped, owners.len()))
    })
    .await?;
    Metrics::inc(&app.metrics.clears, cleared.len() as u64);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "success": true,
            "owners": owners,
            "cleared": cleared,
            "skipped": skipped,
            "message": format!("cleared {} stuck lock(s) across {owners} owner(s)", cleared.len()),
        }),
    ))
}

async fn list(app: &Arc<App>, req: &Request) -> Result<Response, ApiError> {
    let q = Query::parse(&req.query, &["state", "owner_prefix", "limit", "cursor"])?;
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(
            LockState::parse(s)
                .ok_or_else(|| ApiError::bad_request("state must be free, held or stale"))?,
        ),
    };
    let prefix = q.get("owner_prefix").map(str::to_string);
    if let Some(p) = &prefix {
        if p.len() > ids::MAX_OWNER_LEN {
            return Err(ApiError::bad_request("owner_prefix is too long"));
        }
    }
    let limit = q.number::<usize>("limit")?.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let cursor = q.number::<i64>("cursor")?.unwrap_or(0);
    let reg = app.registry.clone();
    let (locks, next) = blocking(move || reg.list(state, prefix.as_deref(), cursor, limit)).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "locks": locks, "next_cursor": next }),
    ))
}

async fn owner_status(app: &Arc<App>, req: &Request, owner: String) -> Result<Response, ApiError> {
    let q = Query::parse(&req.query, &["namespace"])?;
    let ns = namespace_param(&q);
    let reg = app.registry.clone();
    let status = blocking(move || reg.status(ns.as_deref(), &owner)).await?;
    Ok(json_response(StatusCode::OK, &status))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    holder: String,
    operation: String,
    pid: Option<i32>,
    host: Option<String>,
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
}

/// Sets the flag when the request future is dropped (the client went away).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn acquire(
    app: &Arc<App>,
    req: &Request,
    owner: String,
    field: String,
) -> Result<Response, ApiError> {
    let b: AcquireBody = required_json(req)?;
    let key = lock_key(app, req, &owner, &field)?;
    let wait_ms = b.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    if b.pid.is_some_and(|p| p <= 0) {
        return Err(ApiError::bad_request("pid must be a positive process id"));
    }
    let lease_req = LeaseRequest {
        holder: b.holder,
        operation: b.operation,
        pid: b.pid,
        host: b.host,
        ttl: b.ttl_ms.map(Duration::from_millis),
        wait: Duration::from_millis(wait_ms),
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancelled));
    let reg = app.registry.clone();
    let k = key.clone();
    let started = Instant::now();
    let result = blocking(move || {
        let flag = Arc::clone(&cancelled);
        let grant = reg.acquire_lease(&k, &lease_req, &move || flag.load(Ordering::SeqCst))?;
        if cancelled.load(Ordering::SeqCst) {
            // Nobody is left to receive the lease: give it back at once.
            let _ = reg.release_lease(&grant.lease_id);
            return Err(RegistryError::BadRequest("the client went away".into()));
        }
        Ok(grant)
    })
    .await;
    let waited_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(grant) => {
            Metrics::inc(&app.metrics.grants, 1);
            app.metrics.acquire_wait.observe_ms(waited_ms);
            let file = key.file_name(
                app.registry
                    .config()
                    .namespace(key.namespace())
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "namespace vanished",
                        )
                    })?,
            );
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "lease_id": grant.lease_id,
                    "token": grant.token,
                    "expires_at": grant.expires_at,
                    "owner": key.owner(),
                    "field": key.field(),
                    "file": file,
                }),
            ))
        }
        Err(e) => {
            if e.code == "busy" {
                Metrics::inc(&app.metrics.busy, 1);
            }
            Err(e)
        }
    }
}

fn check_lease_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_lease",
            "no such lease",
        ))
    }
}

async fn renew(app: &Arc<App>, id: String) -> Result<Response, ApiError> {
    check_lease_id(&id)?;
    let reg = app.registry.clone();
    let grant = blocking(move || reg.renew_lease(&id)).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"lease_id": grant.lease_id, "token": grant.token, "expires_at": grant.expires_at}),
    ))
}

async fn release(app: &Arc<App>, id: String) -> Result<Response, ApiError> {
    check_lease_id(&id)?;
    let reg = app.registry.clone();
    let held_ms = blocking(move || reg.release_lease(&id)).await?;
    Metrics::inc(&app.metrics.releases, 1);
    if let Some(ms) = held_ms {
        app.metrics.hold_time.observe_ms(ms as f64);
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"released": true, "held_ms": held_ms}),
    ))
}

async fn clear(
    app: &Arc<App>,
    req: &Request,
    owner: String,
    role: Role,
) -> Result<Response, ApiError> {
    let q = Query::parse(&req.query, &["namespace"])?;
    let ns = namespace_param(&q);
    let b: ClearBody = optional_body(req)?;
    let reg = app.registry.clone();
    let who = actor(role, req);
    let out = blocking(move || reg.clear(ns.as_deref(), &owner, b.tokens, &who)).await?;
    Metrics::inc(&app.metrics.clears, out.cleared.len() as u64);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"success": true, "cleared": out.cleared, "skipped": out.skipped}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceBody {
    field: String,
    token: i64,
    reason: String,
}

async fn force_clear(
    app: &Arc<App>,
    req: &Request,
    owner: String,
    role: Role,
) -> Result<Response, ApiError> {
    let b: ForceBody = required_json(req)?;
    let key = lock_key(app, req, &owner, &b.field)?;
    let reg = app.registry.clone();
    let who = actor(role, req);
    let done = blocking(move || reg.force_clear(&key, b.token, &b.reason, &who)).await?;
    Metrics::inc(&app.metrics.force_clears, 1);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"success": true, "force_cleared": done}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceBody {
    owner: String,
    field: String,
    token: i64,
    namespace: Option<String>,
}

async fn fence(app: &Arc<App>, req: &Request) -> Result<Response, ApiError> {
    let b: FenceBody = required_json(req)?;
    let key = app
        .registry
        .key(b.namespace.as_deref(), &b.owner, &b.field)
        .map_err(registry_error)?;
    let reg = app.registry.clone();
    let check = blocking(move || reg.fence_check(&key, b.token)).await?;
    Ok(json_response(StatusCode::OK, &check))
}

async fn history(app: &Arc<App>, req: &Request) -> Result<Response, ApiError> {
    let q = Query::parse(
        &req.query,
        &[
            "namespace",
            "owner",
            "field",
            "event",
            "holder",
            "since",
            "until",
            "limit",
            "cursor",
            "format",
        ],
    )?;
    let config = app.registry.config();
    let ns = ids::namespace_of(config, q.get("namespace"))
        .map_err(|e| registry_error(e.into()))?
        .clone();
    if let Some(owner) = q.get("owner") {
        ids::check_owner(owner).map_err(|e| registry_error(e.into()))?;
    }
    // Empty means "any", like every other filter; the main lock is `field=main`.
    let field = match q.get("field") {
        None => None,
        Some(f) => {
            let f = if f == "main" { "" } else { f };
            if !ns.fields.iter().any(|x| x == f) {
                return Err(registry_error(RegistryError::InvalidId(
                    ids::IdError::UnknownField {
                        namespace: ns.name.clone(),
                        field: f.chars().take(64).collect(),
                        known: ns.fields.join(", "),
                    },
                )));
            }
            Some(f.to_string())
        }
    };
    let event = q
        .get("event")
        .map(|e| {
            EventKind::parse(e).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown event {:?}",
                    e.chars().take(40).collect::<String>()
                ))
            })
        })
        .transpose()?;
    let time = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| {
                clock::parse_time(v).ok_or_else(|| {
                    ApiError::bad_request(format!("{k} must be RFC 3339 or epoch milliseconds"))
                })
            })
            .transpose()
    };
    let limit = q.number::<usize>("limit")?.unwrap_or(50);
    let csv = match q.get("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("format must be json or csv")),
    };
    let max = if csv { 100_000 } else { 1000 };
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    if let Some(h) = q.get("holder") {
        if h.len() > 200 {
            return Err(ApiError::bad_request("holder is too long"));
        }
    }
    let query = HistoryQuery {
        namespace: q.get("namespace").map(|_| ns.name.clone()),
        owner: q.get("owner").map(str::to_string),
        field,
        event,
        holder: q.get("holder").map(str::to_string),
        since_ms: time("since")?,
        until_ms: time("until")?,
        before_event_id: q.number::<i64>("cursor")?,
        limit,
    };
    let reg = app.registry.clone();
    let rows = blocking(move || reg.history(&query)).await?;
    if csv {
        let mut resp = text_response(
            StatusCode::OK,
            "text/csv; charset=utf-8",
            crate::export::history_csv(&rows),
        );
        resp.headers_mut().insert(
            "content-disposition",
            warp::http::HeaderValue::from_static("attachment; filename=\"lock-history.csv\""),
        );
        return Ok(resp);
    }
    let next = if rows.len() == limit {
        rows.last().map(|r| r.event_id)
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"events": rows, "next_cursor": next}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    max_rows: Option<usize>,
}

async fn sql(app: &Arc<App>, req: &Request) -> Result<Response, ApiError> {
    let b: SqlBody = required_json(req)?;
    let path = app.registry.db_path();
    let limits = sql_console::Limits {
        max_rows: b.max_rows.unwrap_or(1000).clamp(1, 10_000),
        ..sql_console::Limits::default()
    };
    let result = off_thread(move || sql_console::run(&path, &b.sql, limits)).await?;
    match result {
        Ok(r) => Ok(json_response(StatusCode::OK, &r)),
        Err(e @ sql_console::SqlError::NotReadOnly(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            e.to_string(),
        )),
        Err(e @ sql_console::SqlError::Timeout(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sql_timeout",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "sql_error",
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_and_route() {
        let segs = split_path("/api/v1/locks/user%40x.com_1/main/acquire").unwrap();
        assert_eq!(
            classify(&segs).unwrap().0,
            Route::Acquire("user@x.com_1".into(), "main".into())
        );
        assert!(split_path("/a/%zz").is_err());
        assert!(split_path("/a/%ff%fe").is_err());
        assert_eq!(
            split_path("/get_lock_status/%2e%2e%2fetc").unwrap()[1],
            "../etc"
        );
        assert!(classify(&split_path("/nope").unwrap()).is_none());
    }

    #[test]
    fn queries_refuse_unknown_and_repeated_keys() {
        assert!(Query::parse("state=held&limit=5", &["state", "limit"]).is_ok());
        assert!(Query::parse("stat=held", &["state"]).is_err());
        assert!(Query::parse("state=a&state=b", &["state"]).is_err());
        let q = Query::parse("owner=a%2Bb+c", &["owner"]).unwrap();
        assert_eq!(q.get("owner"), Some("a+b c"));
    }
}
