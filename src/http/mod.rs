//! The HTTP service (`lockledger serve`): warp plumbing, routing, and the background
//! reaper.
//!
//! Thin by design: each route checks who may call it (`security`), decodes its input,
//! runs one registry call inside `spawn_blocking` (database and lock calls block), and
//! renders JSON. Errors are always `{error: {code, message}}` with a matching status;
//! no response carries an absolute server path.

pub mod api;
pub mod demo;
pub mod metrics;
pub mod openapi;
pub mod security;
pub mod ui;

use crate::registry::Registry;
use bytes::Bytes;
use futures_util::StreamExt;
use security::SecurityPolicy;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::Filter;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("refusing to listen on {0} (not loopback) without both --token and --admin-token")]
    InsecureBind(SocketAddr),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    pub user_token: Option<String>,
    pub admin_token: Option<String>,
    pub allowed_hosts: Vec<String>,
    /// Serve the demo chat and holder simulations (`serve --demo`).
    pub demo: bool,
}

/// Shared state of the running service.
#[derive(Debug)]
pub struct App {
    pub registry: Registry,
    pub policy: SecurityPolicy,
    pub metrics: metrics::Metrics,
    pub started: Instant,
    pub demo: Option<demo::DemoState>,
}

/// A typed API error; rendered as `{error: {code, message}}` plus optional detail.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

pub type Response = warp::reply::Response;

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(
            "{{\"error\":{{\"code\":\"internal\",\"message\":\"cannot render response: {e}\"}}}}"
        )
        .into_bytes()
    });
    let mut resp = Response::new(Bytes::from(body).into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

pub fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = Response::new(Bytes::from(body).into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp
}

impl ApiError {
    pub fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let (Some(detail), Some(obj)) = (self.detail, body.as_object_mut()) {
            if let Some(map) = detail.as_object() {
                for (k, v) in map {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        json_response(self.status, &body)
    }
}

/// One decoded request, independent of warp, so handlers are plain functions.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

async fn read_body<S, B>(stream: S, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(body))
}

/// The complete warp filter of the service.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body| {
                let app = Arc::clone(&app);
                async move {
                    let started = Instant::now();
                    let path = path.as_str().to_string();
                    let resp = match read_body(body, &headers, MAX_BODY_BYTES).await {
                        Ok(body) => {
                            let req = Request {
                                method: method.clone(),
                                path: path.clone(),
                                query,
                                headers,
                                body,
                            };
                            api::handle(&app, req).await
                        }
                        Err(e) => e.into_response(),
                    };
                    app.metrics.count_response(resp.status().as_u16());
                    log::info!(
                        "{method} {} -> {} in {:.1} ms",
                        path.chars().take(200).collect::<String>(),
                        resp.status().as_u16(),
                        started.elapsed().as_secs_f64() * 1000.0
                    );
                    resp
                }
            },
        )
        .or(warp::any().map(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "malformed request")
                .into_response()
        }))
        .unify()
}

/// Binds the listener (a taken port is an error, not a panic) and returns it with the
/// address actually bound (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok((listener, local))
}

/// Builds the shared state; refuses an exposed bind without tokens. A missing admin token
/// is generated and written to `STORAGE/admin-token` (mode 0600).
pub fn app_for(registry: Registry, opts: &ServeOptions, port: u16) -> Result<Arc<App>, ServeError> {
    if !security::is_loopback(&opts.bind)
        && (opts.user_token.is_none() || opts.admin_token.is_none())
    {
        return Err(ServeError::InsecureBind(opts.bind));
    }
    let admin_token = match &opts.admin_token {
        Some(t) if t.len() >= 8 => t.clone(),
        Some(_) => {
            return Err(ServeError::Setup(
                "--admin-token must be at least 8 characters".into(),
            ))
        }
        None => {
            let token = security::random_token()
                .map_err(|e| ServeError::Setup(format!("cannot make an admin token: {e}")))?;
            write_admin_token(&registry.config().storage_dir, &token)?;
            log::warn!(
                "no --admin-token given: generated one in <storage>/admin-token (mode 0600)"
            );
            token
        }
    };
    if opts.user_token.as_deref().is_some_and(|t| t.len() < 8) {
        return Err(ServeError::Setup(
            "--token must be at least 8 characters".into(),
        ));
    }
    Ok(Arc::new(App {
        registry,
        policy: SecurityPolicy {
            user_token: opts.user_token.clone(),
            admin_token,
            allowed_hosts: opts.allowed_hosts.clone(),
            port,
        },
        metrics: metrics::Metrics::default(),
        started: Instant::now(),
        demo: opts.demo.then(demo::DemoState::default),
    }))
}

fn write_admin_token(storage: &std::path::Path, token: &str) -> Result<(), ServeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = storage.join("admin-token");
    let tmp = storage.join(".admin-token.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| ServeError::Setup(format!("cannot write the admin token file: {e}")))
}

/// Periodic upkeep: reap leases every `reaper_period`, reconcile every
/// `reconcile_period` (default 5 s), prune hourly.
pub fn spawn_upkeep(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = app.registry.config().reaper_period;
        let reconcile_every = app.registry.config().reconcile_period;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reconcile = Instant::now();
        let mut last_prune: Option<Instant> = None;
        loop {
            tick.tick().await;
            let reg = app.registry.clone();
            let do_reconcile = reconcile_every.is_some_and(|p| last_reconcile.elapsed() >= p);
            let do_prune = last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
            let res = tokio::task::spawn_blocking(move || {
                let reaped = reg.reap().map(|v| v.len()).unwrap_or_else(|e| {
                    log::warn!("reaper: {e}");
                    0
                });
                let reconciled = if do_reconcile {
                    reg.reconcile("reconciler")
                        .map(|r| r.reconciled.len())
                        .unwrap_or_else(|e| {
                            log::warn!("reconcile: {e}");
                            0
                        })
                } else {
                    0
                };
                if do_prune {
                    if let Err(e) = reg.prune_history() {
                        log::warn!("prune: {e}");
                    }
                }
                (reaped, reconciled)
            })
            .await;
            if let Ok((reaped, reconciled)) = res {
                metrics::Metrics::inc(&app.metrics.expiries, reaped as u64);
                metrics::Metrics::inc(&app.metrics.reconciled, reconciled as u64);
            }
            if do_reconcile {
                last_reconcile = Instant::now();
            }
            if do_prune {
                last_prune = Some(Instant::now());
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen for SIGTERM: {e}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Runs the service until SIGINT/SIGTERM, then releases the leases it holds.
pub async fn serve(registry: Registry, opts: ServeOptions) -> Result<(), ServeError> {
    if !security::is_loopback(&opts.bind)
        && (opts.user_token.is_none() || opts.admin_token.is_none())
    {
        return Err(ServeError::InsecureBind(opts.bind));
    }
    let (listener, local) = bind(opts.bind).await?;
    let app = app_for(registry, &opts, local.port())?;
    {
        let reg = app.registry.clone();
        let report = tokio::task::spawn_blocking(move || reg.reconcile("startup"))
            .await
            .map_err(|e| ServeError::Setup(e.to_string()))?
            .map_err(|e| ServeError::Setup(format!("start-up reconciliation failed: {e}")))?;
        if !report.reconciled.is_empty() {
            log::warn!(
                "start-up reconciliation repaired {} record(s)",
                report.reconciled.len()
            );
        }
    }
    let upkeep = spawn_upkeep(Arc::clone(&app));
    println!("lockledger listening on http://{local}");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = warp::serve(routes(Arc::clone(&app)))
        .incoming(listener)
        .graceful(async {
            let _ = stop_rx.await;
        })
        .run();
    // Graceful shutdown waits for requests in flight; a long acquire wait must not hold
    // the service hostage, so it gets 5 seconds.
    tokio::select! {
        _ = server => {},
        _ = async {
            shutdown_signal().await;
            log::info!("shutting down");
            let _ = stop_tx.send(());
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => {},
    }
    upkeep.abort();
    let reg = app.registry.clone();
    let released = tokio::task::spawn_blocking(move || reg.release_all_leases("service shutdown"))
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    match released {
        Ok(n) => log::info!("shut down; released {n} lease(s)"),
        Err(e) => log::error!("shutting down: could not release leases cleanly: {e}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Handler tests through warp's test client: the same filter the server runs, with
    //! no socket in between.
    use super::*;
    use crate::config::Config;

    fn app(dir: &std::path::Path) -> Arc<App> {
        let registry = Registry::open(Config::defaults(dir)).unwrap();
        let opts = ServeOptions {
            bind: "127.0.0.1:8787".parse().unwrap(),
            user_token: None,
            admin_token: Some("test-admin-token".into()),
            allowed_hosts: vec![],
            demo: false,
        };
        app_for(registry, &opts, 8787).unwrap()
    }

    fn request(method: &str, path: &str) -> warp::test::RequestBuilder {
        warp::test::request()
            .method(method)
            .path(path)
            .header("host", "127.0.0.1:8787")
    }

    fn json(resp: &warp::http::Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(resp.body()).unwrap()
    }

    #[tokio::test]
    async fn legacy_status_has_the_chat_apps_keys() {
        let dir = tempfile::tempdir().unwrap();
        let routes = routes(app(dir.path()));
        let resp = request("GET", "/get_lock_status/conv42")
            .reply(&routes)
            .await;
        assert_eq!(resp.status(), 200);
        let v = json(&resp);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "any_locked",
                "can_cleanup",
                "conversation_id",
                "locks",
                "locks_status",
                "stale_locks"
            ]
        );
        let fields: Vec<&str> = v["locks_status"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "",
                "all",
                "memory",
                "message_operations",
                "messages",
                "uploaded_documents_list"
            ]
        );
    }

    #[tokio::test]
    async fn an_empty_json_post_clears_and_a_form_post_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let routes = routes(app(dir.path()));
        let ok = request("POST", "/ensure_locks_cleared/conv42")
            .header("content-type", "application/json")
            .reply(&routes)
            .await;
        assert_eq!(ok.status(), 200);
        assert_eq!(json(&ok)["success"], true);
        let form = request("POST", "/ensure_locks_cleared/conv42")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=b")
            .reply(&routes)
            .await;
        assert_eq!(form.status(), 415);
        assert_eq!(json(&form)["error"]["code"], "json_required");
    }

    #[tokio::test]
    async fn lease_round_trip_and_errors_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let routes = routes(app(dir.path()));
        let grant = request("POST", "/api/v1/locks/c1/messages/acquire")
            .header("content-type", "application/json")
            .body(r#"{"holder":"t","operation":"op","ttl_ms":5000}"#)
            .reply(&routes)
            .await;
        assert_eq!(grant.status(), 200);
        let lease = json(&grant)["lease_id"].as_str().unwrap().to_string();
        let busy = request("POST", "/api/v1/locks/c1/messages/acquire")
            .header("content-type", "application/json")
            .body(r#"{"holder":"u","operation":"op2"}"#)
            .reply(&routes)
            .await;
        assert_eq!(busy.status(), 409);
        assert_eq!(json(&busy)["holder"]["operation"], "op");
        let released = request("DELETE", &format!("/api/v1/leases/{lease}"))
            .header("content-type", "application/json")
            .reply(&routes)
            .await;
        assert_eq!(released.status(), 200);
        let gone = request("POST", &format!("/api/v1/leases/{lease}/renew"))
            .header("content-type", "application/json")
            .reply(&routes)
            .await;
        assert_eq!(gone.status(), 410);
        for (method, path, status) in [
            ("GET", "/api/v1/locks/..%2Fetc", 400),
            ("GET", "/nope", 404),
            ("GET", "/ensure_locks_cleared/c1", 405),
            ("POST", "/api/v1/sql", 403),
        ] {
            let resp = request(method, path)
                .header("content-type", "application/json")
                .body(r#"{"sql":"SELECT 1"}"#)
                .reply(&routes)
                .await;
            assert_eq!(resp.status(), status, "{method} {path}");
            assert!(json(&resp)["error"]["message"].is_string());
        }
        let foreign = warp::test::request()
            .path("/healthz")
            .header("host", "evil.example:8787")
            .reply(&routes)
            .await;
        assert_eq!(foreign.status(), 403);
    }
}
