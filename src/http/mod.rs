//! The HTTP service (`lockledger serve`): the listener, the shared state and the warp
//! plumbing that turns each request into a [`decode::Request`] for `handlers`.
//!
//! - [`routes`]: the route table (router, API document); [`handlers`]: one per route;
//! - [`decode`], [`error`]: requests in, answers out; [`offload`]: blocking work;
//! - [`security`]: tokens, roles, Host/Origin, CSRF; [`metrics`]; [`openapi`];
//! - [`ui`]: the web pages; [`demo`]: demo mode; [`background`]: reaper and upkeep.
//!
//! Thin by design: each route checks who may call it, decodes its input, runs one
//! registry call off the executor, and renders JSON. Errors are always
//! `{error: {code, message}}` with a matching status; no response carries an absolute
//! server path.

pub mod background;
pub mod decode;
pub mod demo;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod offload;
pub mod openapi;
pub mod routes;
pub mod security;
pub mod server;
pub mod ui;

use crate::registry::Registry;
use decode::{read_body, Request, MAX_BODY_BYTES};
use error::{ApiError, Response};
use security::SecurityPolicy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter;

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
    pub allowed_origins: Vec<String>,
    /// Serve the demo chat and holder simulations (`serve --demo`).
    pub demo: bool,
    /// Log every request at info level (`--access-log`); otherwise only server errors.
    pub access_log: bool,
    /// Most connections open at once (also kept below the file-descriptor limit).
    pub max_connections: usize,
    /// How long a request head may take to arrive (also the keep-alive idle timeout).
    pub header_timeout: std::time::Duration,
}

/// Shared state of the running service.
#[derive(Debug)]
pub struct App {
    pub registry: Registry,
    pub policy: SecurityPolicy,
    pub metrics: metrics::Metrics,
    pub started: Instant,
    pub demo: Option<demo::DemoState>,
    pub access_log: bool,
    /// One admin SQL statement at a time (there is one admin token).
    pub sql_gate: tokio::sync::Semaphore,
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
                            handlers::handle(&app, req).await
                        }
                        Err(e) => e.into_response(),
                    };
                    let status = resp.status().as_u16();
                    app.metrics.count_response(status);
                    if app.access_log || status >= 500 {
                        let level = if status >= 500 {
                            log::Level::Warn
                        } else {
                            log::Level::Info
                        };
                        log::log!(
                            level,
                            "{method} {} -> {status} in {:.1} ms",
                            path.chars().take(200).collect::<String>(),
                            started.elapsed().as_secs_f64() * 1000.0
                        );
                    }
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
            allowed_origins: opts.allowed_origins.clone(),
            port,
        },
        metrics: metrics::Metrics::default(),
        started: Instant::now(),
        demo: opts.demo.then(demo::DemoState::default),
        access_log: opts.access_log,
        sql_gate: tokio::sync::Semaphore::new(1),
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
    // Start-up reconciliation, before serving when it can be done at once; if another
    // process holds the database's write lock, the service starts anyway and the upkeep
    // thread keeps retrying it.
    {
        let reg = app.registry.clone();
        let pass = tokio::task::spawn_blocking(move || reg.reconcile("startup"));
        match tokio::time::timeout(std::time::Duration::from_secs(1), pass).await {
            Ok(Ok(Ok(report))) if !report.reconciled.is_empty() => log::warn!(
                "start-up reconciliation repaired {} record(s)",
                report.reconciled.len()
            ),
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => {
                log::warn!("start-up reconciliation: {e}; retrying in the background")
            }
            Ok(Err(_)) | Err(_) => {
                log::warn!("start-up reconciliation is waiting for the database; serving meanwhile")
            }
        }
    }
    let upkeep = background::spawn_upkeep(Arc::clone(&app))
        .map_err(|e| ServeError::Setup(format!("cannot start the upkeep thread: {e}")))?;
    let cap = server::connection_cap(opts.max_connections);
    println!("lockledger listening on http://{local}");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    // Stops accepting on SIGINT/SIGTERM; requests in flight get up to 5 seconds (a long
    // acquire wait must not hold the service hostage).
    server::run(
        listener,
        warp::service(routes(Arc::clone(&app))),
        cap,
        opts.header_timeout,
        async {
            shutdown_signal().await;
            log::info!("shutting down");
        },
    )
    .await;
    drop(upkeep);
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
