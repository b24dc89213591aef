//! The versioned lock routes: list, one owner's status, acquire/renew/release of leases,
//! safe and forced clears, and fence checks.

use super::Ctx;
use crate::http::decode::{
    empty_as_none, optional_body, query, required_json, NamespaceQuery, NoQuery, MAX_WAIT_MS,
};
use crate::http::error::{json_response, registry_error, ApiError, Response};
use crate::http::metrics::GrantKind;
use crate::http::offload::{blocking, now_or_blocking};
use crate::ids::{self, LockKey};
use crate::policy::stale::LockState;
use crate::registry::{
    ClearedLock, ForceCleared, LeaseRequest, LockOutcome, LockReport, SkippedLock,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};
use warp::http::StatusCode;

/// The lock a route names: owner and field from the path or body, namespace from the
/// query (`?namespace=`), validated.
fn lock_key(cx: &Ctx<'_>, owner: &str, field: &str) -> Result<LockKey, ApiError> {
    let q: NamespaceQuery = query(&cx.req.query)?;
    cx.app
        .registry
        .key(q.namespace.as_deref(), owner, field)
        .map_err(registry_error)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `free`, `held` or `stale` (held and stale list recorded holders).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub state: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub owner_prefix: Option<String>,
    /// 1..1000, default 100.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockList {
    pub locks: Vec<LockReport>,
    pub next_cursor: Option<i64>,
}

pub async fn list(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let q: ListQuery = query(&cx.req.query)?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            LockState::parse(s)
                .ok_or_else(|| ApiError::bad_request("state must be free, held or stale"))?,
        ),
    };
    if q.owner_prefix
        .as_ref()
        .is_some_and(|p| p.len() > ids::MAX_OWNER_LEN)
    {
        return Err(ApiError::bad_request("owner_prefix is too long"));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let cursor = q.cursor.unwrap_or(0);
    let reg = cx.app.registry.clone();
    let prefix = q.owner_prefix;
    let (locks, next_cursor) =
        blocking(move || reg.list(state, prefix.as_deref(), cursor, limit)).await?;
    Ok(json_response(
        StatusCode::OK,
        &LockList { locks, next_cursor },
    ))
}

pub async fn owner_status(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let q: NamespaceQuery = query(&cx.req.query)?;
    let owner = cx.arg(0).to_string();
    let reg = cx.app.registry.clone();
    let status = blocking(move || reg.status(q.namespace.as_deref(), &owner)).await?;
    Ok(json_response(StatusCode::OK, &status))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Who holds it, e.g. `chat-app`.
    pub holder: String,
    /// What it is doing, e.g. `send_message`.
    pub operation: String,
    /// The client's pid on this host: the lease ends soon after that process dies.
    pub pid: Option<i32>,
    pub host: Option<String>,
    /// Lease time-to-live (default from the configuration).
    pub ttl_ms: Option<u64>,
    /// How long to wait for the lock (0..60000, default 0).
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Acquired {
    pub lease_id: String,
    /// The fencing token of this grant.
    pub token: i64,
    pub expires_at: String,
    pub owner: String,
    pub field: String,
    /// The lock file's bare name.
    pub file: String,
}

pub async fn acquire(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let b: AcquireBody = required_json(cx.req)?;
    let key = lock_key(cx, cx.arg(0), cx.arg(1))?;
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
    let started = Instant::now();
    // Waiting holds no thread; if the client goes away, this future is dropped, it leaves
    // the queue, and a grant that arrives anyway is given back.
    let result = cx
        .app
        .registry
        .acquire_lease_async(&key, &lease_req)
        .await
        .map_err(registry_error);
    match result {
        Ok(grant) => {
            cx.app.metrics.count_grant(GrantKind::Lease);
            cx.app
                .metrics
                .observe_wait_ms(started.elapsed().as_secs_f64() * 1000.0);
            let file = cx.app.registry.file_of(&key).map_err(registry_error)?;
            Ok(json_response(
                StatusCode::OK,
                &Acquired {
                    lease_id: grant.lease_id,
                    token: grant.token,
                    expires_at: grant.expires_at,
                    owner: key.owner().to_string(),
                    field: key.field().to_string(),
                    file,
                },
            ))
        }
        Err(e) => {
            if e.code == "busy" {
                cx.app.metrics.busy.inc();
            }
            Err(e)
        }
    }
}

fn lease_id(cx: &Ctx<'_>) -> Result<String, ApiError> {
    let id = cx.arg(0);
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_string())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_lease",
            "no such lease or registration",
        ))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Renewed {
    pub lease_id: String,
    pub token: i64,
    pub expires_at: String,
}

pub async fn renew(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let id = lease_id(cx)?;
    let reg = cx.app.registry.clone();
    let grant = now_or_blocking(move || reg.renew_lease(&id)).await?;
    Ok(json_response(
        StatusCode::OK,
        &Renewed {
            lease_id: grant.lease_id,
            token: grant.token,
            expires_at: grant.expires_at,
        },
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    pub released: bool,
    /// How long it was held, if its record was still there.
    pub held_ms: Option<i64>,
}

pub async fn release(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let id = lease_id(cx)?;
    let reg = cx.app.registry.clone();
    let held_ms = reg.release_lease_async(&id).await.map_err(registry_error)?;
    cx.app.metrics.count_release(GrantKind::Lease);
    if let Some(ms) = held_ms {
        cx.app.metrics.observe_hold_ms(ms as f64);
    }
    Ok(json_response(
        StatusCode::OK,
        &Released {
            released: true,
            held_ms,
        },
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    /// The token you were shown for each lock, by field (`main` or `""` for the main
    /// lock); a lock whose token changed since is skipped.
    pub tokens: Option<BTreeMap<String, i64>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cleared {
    /// Nothing of the owner is held or stale after the clear.
    pub success: bool,
    pub cleared: Vec<ClearedLock>,
    pub skipped: Vec<SkippedLock>,
    /// Per lock: what the clear did and what it is now, in words.
    pub outcomes: Vec<LockOutcome>,
}

pub async fn clear(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let q: NamespaceQuery = query(&cx.req.query)?;
    let b: ClearBody = optional_body(cx.req)?;
    let owner = cx.arg(0).to_string();
    let reg = cx.app.registry.clone();
    let who = cx.actor();
    let out = blocking(move || reg.clear_and_look(q.namespace.as_deref(), &owner, b.tokens, &who))
        .await?;
    cx.app.metrics.clears.inc_by(out.cleared.len() as u64);
    Ok(json_response(
        StatusCode::OK,
        &Cleared {
            success: out.success,
            cleared: out.cleared,
            skipped: out.skipped,
            outcomes: out.outcomes,
        },
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceBody {
    pub field: String,
    /// The exact token of the grant shown.
    pub token: i64,
    /// Why (recorded in history).
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForceClearedAnswer {
    pub success: bool,
    pub force_cleared: ForceCleared,
}

pub async fn force_clear(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let b: ForceBody = required_json(cx.req)?;
    let key = lock_key(cx, cx.arg(0), &b.field)?;
    let reg = cx.app.registry.clone();
    let who = cx.actor();
    let done = blocking(move || reg.force_clear(&key, b.token, &b.reason, &who)).await?;
    cx.app.metrics.force_clears.inc();
    Ok(json_response(
        StatusCode::OK,
        &ForceClearedAnswer {
            success: true,
            force_cleared: done,
        },
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FenceBody {
    pub owner: String,
    pub field: String,
    pub token: i64,
    pub namespace: Option<String>,
}

pub async fn fence(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let b: FenceBody = required_json(cx.req)?;
    let key = cx
        .app
        .registry
        .key(b.namespace.as_deref(), &b.owner, &b.field)
        .map_err(registry_error)?;
    let reg = cx.app.registry.clone();
    let check = blocking(move || reg.fence_check(&key, b.token)).await?;
    Ok(json_response(StatusCode::OK, &check))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// The process holding the lock file's flock (it must show in /proc/locks).
    pub pid: i32,
    /// Who holds it, e.g. `chat-app`.
    pub holder: String,
    /// What it is doing, e.g. `save_local`.
    pub operation: String,
    /// With a shared (PostgreSQL) registry, how long to wait while another host holds
    /// the lock (0..60000, default 0); refused with 409 `busy` after that, and the
    /// process must let its flock go. Ignored with SQLite (the flock is the grant).
    pub wait_ms: Option<u64>,
}

pub async fn register(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let b: RegisterBody = required_json(cx.req)?;
    let key = lock_key(cx, cx.arg(0), cx.arg(1))?;
    let reg = cx.app.registry.clone();
    let wait_ms = b.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    let wait = Duration::from_millis(wait_ms);
    let done = reg
        .register_async(&key, b.pid, &b.holder, &b.operation, wait)
        .await
        .map_err(registry_error)?;
    cx.app.metrics.count_grant(GrantKind::Registration);
    Ok(json_response(StatusCode::OK, &done))
}

pub async fn unregister(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let id = lease_id(cx)?;
    let reg = cx.app.registry.clone();
    let held_ms = blocking(move || reg.unregister(&id)).await?;
    cx.app.metrics.count_release(GrantKind::Registration);
    Ok(json_response(
        StatusCode::OK,
        &Released {
            released: true,
            held_ms,
        },
    ))
}
