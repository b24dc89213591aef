//! Operational routes: the index, health, metrics and the API document.

use super::Ctx;
use crate::http::decode::{query, NoQuery};
use crate::http::error::{json_response, text_response, ApiError, Response};
use crate::http::metrics::{self, Gauges};
use crate::http::offload::blocking;
use crate::store::history::HistoryQuery;
use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;

/// `GET /` for API clients (browsers get the chat page).
#[derive(Debug, Serialize, ToSchema)]
pub struct Index {
    pub service: &'static str,
    pub version: &'static str,
    /// The API document.
    pub api: &'static str,
    pub health: &'static str,
    /// The chat page with the Lock Status button.
    pub ui: &'static str,
    /// The lock-history audit page.
    pub history: &'static str,
}

pub fn index(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    Ok(json_response(
        StatusCode::OK,
        &Index {
            service: "lockledger",
            version: env!("CARGO_PKG_VERSION"),
            api: "/api/v1/openapi.json",
            health: "/healthz",
            ui: "/ui/",
            history: "/ui/history",
        },
    ))
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is wrong.
    pub status: String,
    pub uptime_s: u64,
    /// Leases this service holds.
    pub leases: usize,
    /// Acquirers waiting in this service.
    pub waiting: usize,
    /// Where the records live: `sqlite` (the embedded default) or `postgresql`.
    pub database: &'static str,
}

pub async fn health(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let reg = cx.app.registry.clone();
    let problem = blocking(move || {
        reg.check_store()?;
        reg.history(&HistoryQuery {
            limit: 1,
            ..HistoryQuery::default()
        })
        .map(|_| ())
    })
    .await
    .err()
    .map(|e| e.message);
    // Unusable (the database is gone or unreadable): 503. Reads working but writes
    // refused because another process holds the write lock: degraded, naming it.
    let (status, words) = match (problem, cx.app.registry.write_trouble()) {
        (Some(p), _) => (StatusCode::SERVICE_UNAVAILABLE, p),
        (None, Some(busy)) => (StatusCode::OK, format!("degraded: {busy}")),
        (None, None) => (StatusCode::OK, "ok".to_string()),
    };
    Ok(json_response(
        status,
        &Health {
            status: words,
            uptime_s: cx.app.started.elapsed().as_secs(),
            leases: cx.app.registry.leases_held().len(),
            waiting: cx.app.registry.waiting_count(),
            database: cx.app.registry.backend_name(),
        },
    ))
}

pub async fn metrics(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let reg = cx.app.registry.clone();
    let counts = blocking(move || reg.recorded_counts()).await?;
    let gauges = Gauges {
        held: counts.held,
        stale: counts.stale,
        file_replaced: counts.file_replaced,
        conflicts: counts.conflicts,
        waiting: cx.app.registry.waiting_count() as u64,
        leases: cx.app.registry.leases_held().len() as u64,
    };
    Ok(text_response(
        StatusCode::OK,
        metrics::CONTENT_TYPE,
        cx.app.metrics.render(gauges),
    ))
}

/// The OpenAPI document (an OpenAPI 3.1 object).
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct Document(utoipa::openapi::OpenApi);

pub fn openapi(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    Ok(json_response(
        StatusCode::OK,
        &Document(crate::http::openapi::document()),
    ))
}
