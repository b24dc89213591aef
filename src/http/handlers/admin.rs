//! Admin and inspection routes: read-only SQL, the wait queue, reconciliation on demand.

use super::Ctx;
use crate::http::decode::{query, required_json, NoQuery};
use crate::http::error::{json_response, ApiError, Response};
use crate::http::offload::{blocking, off_thread};
use crate::registry::waitq::WaiterInfo;
use crate::store::console::{self, SqlError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlBody {
    /// One read-only statement.
    pub sql: String,
    /// Row cap (default 1000, at most 10000).
    pub max_rows: Option<usize>,
}

pub async fn sql(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let b: SqlBody = required_json(cx.req)?;
    let Ok(_running) = cx.app.sql_gate.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "sql_busy",
            "another admin query is running; one runs at a time",
        )
        .retry_after(1));
    };
    let reg = cx.app.registry.clone();
    let limits = console::Limits {
        max_rows: b.max_rows.unwrap_or(1000).clamp(1, 10_000),
        ..console::Limits::default()
    };
    let result = off_thread(move || reg.admin_sql(&b.sql, limits)).await?;
    match result {
        Ok(r) => Ok(json_response(StatusCode::OK, &r)),
        Err(e @ SqlError::NotReadOnly(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            e.to_string(),
        )),
        Err(e @ SqlError::Timeout(_)) => Err(ApiError::new(
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Waiters {
    pub waiters: Vec<WaiterInfo>,
}

pub fn waiters(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    Ok(json_response(
        StatusCode::OK,
        &Waiters {
            waiters: cx.app.registry.waiters(),
        },
    ))
}

pub async fn reconcile(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let reg = cx.app.registry.clone();
    let who = cx.actor();
    let report = blocking(move || reg.reconcile(&who)).await?;
    cx.app
        .metrics
        .reconciled
        .inc_by(report.reconciled.len() as u64);
    Ok(json_response(StatusCode::OK, &report))
}
