//! Request handling: the checks every request passes (Host/Origin, route, method, role,
//! the CSRF rule), then one handler per route. Handlers are thin: decode, call the
//! registry (off the executor), render.
//!
//! - [`ops`]: index, health, metrics, the API document;
//! - [`legacy`]: the chat app's own routes and keys;
//! - [`locks`]: the versioned lock routes (leases, clears, fences);
//! - [`history`]: the audit trail as JSON or CSV;
//! - [`admin`]: read-only SQL, the wait queue, reconciliation on demand.

pub mod admin;
pub mod history;
pub mod legacy;
pub mod locks;
pub mod ops;

use super::decode::{split_path, Request};
use super::error::{denied, ApiError, Response};
use super::routes::{self, NoRoute, RouteId};
use super::security::Role;
use super::{demo, ui, App};
use std::sync::Arc;
use warp::http::{HeaderValue, Method, StatusCode};

/// One request on its way through a handler.
pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub req: &'a Request,
    pub role: Role,
    /// The path's captured segments, in the order of the route's template.
    args: Vec<String>,
}

impl Ctx<'_> {
    /// The `i`-th captured path segment (the route table guarantees it exists).
    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map(String::as_str).unwrap_or("")
    }

    /// Who is acting, for history: the role and a short client-given name.
    pub fn actor(&self) -> String {
        let name: String = self
            .req
            .headers
            .get("x-lockledger-actor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http")
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(64)
            .collect();
        let role = match self.role {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Anyone => "anonymous",
        };
        format!("{role}:{name}")
    }
}

pub async fn handle(app: &Arc<App>, req: Request) -> Response {
    match dispatch(app, &req).await {
        Ok(resp) => resp,
        Err(e) if legacy::is_legacy_path(&req.path) => legacy::error(e).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn dispatch(app: &Arc<App>, req: &Request) -> Result<Response, ApiError> {
    app.policy.check_origin(&req.headers).map_err(denied)?;
    if req.method == Method::GET {
        let page = if req.path == "/" && ui::wants_html(&req.headers) {
            "/ui/"
        } else {
            req.path.as_str()
        };
        if let Some(resp) = ui::asset(page) {
            return Ok(resp);
        }
    }
    let segs = split_path(&req.path)?;
    let (spec, args) = match routes::find(&req.method, &segs) {
        Ok(found) => found,
        Err(NoRoute::NotFound) => return Err(ApiError::not_found("no such route")),
        Err(NoRoute::WrongMethod(method)) => {
            let mut resp = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this route takes {method} only"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(method.as_str()) {
                resp.headers_mut().insert("allow", v);
            }
            return Ok(resp);
        }
    };
    let role = app
        .policy
        .authorize(&req.headers, spec.role)
        .map_err(denied)?;
    if spec.method == Method::POST || spec.method == Method::DELETE {
        app.policy
            .check_state_change(&req.headers)
            .map_err(denied)?;
    }
    let cx = Ctx {
        app,
        req,
        role,
        args,
    };
    match spec.id {
        RouteId::Index => ops::index(&cx),
        RouteId::Health => ops::health(&cx).await,
        RouteId::OpenApi => ops::openapi(&cx),
        RouteId::Metrics => ops::metrics(&cx).await,
        RouteId::LegacyStatus => legacy::status(&cx).await,
        RouteId::LegacyEnsureCleared => legacy::ensure_cleared(&cx).await,
        RouteId::LegacyForceClear => legacy::force_clear(&cx).await,
        RouteId::LegacyClearAll => legacy::clear_all(&cx).await,
        RouteId::List => locks::list(&cx).await,
        RouteId::OwnerStatus => locks::owner_status(&cx).await,
        RouteId::Acquire => locks::acquire(&cx).await,
        RouteId::Renew => locks::renew(&cx).await,
        RouteId::Release => locks::release(&cx).await,
        RouteId::Clear => locks::clear(&cx).await,
        RouteId::ForceClear => locks::force_clear(&cx).await,
        RouteId::Fence => locks::fence(&cx).await,
        RouteId::Register => locks::register(&cx).await,
        RouteId::Unregister => locks::unregister(&cx).await,
        RouteId::History => history::history(&cx).await,
        RouteId::Sql => admin::sql(&cx).await,
        RouteId::Waiters => admin::waiters(&cx),
        RouteId::Reconcile => admin::reconcile(&cx).await,
        RouteId::DemoStatus => demo::status(&cx),
        RouteId::DemoChat => demo::chat(&cx).await,
        RouteId::DemoSimulate => demo::simulate(&cx).await,
    }
}

/// Decodes `body` as every route's JSON body type (for fuzzing; must never panic).
pub fn fuzz_bodies(body: &[u8]) {
    let _ = serde_json::from_slice::<locks::AcquireBody>(body);
    let _ = serde_json::from_slice::<locks::ClearBody>(body);
    let _ = serde_json::from_slice::<locks::ForceBody>(body);
    let _ = serde_json::from_slice::<locks::FenceBody>(body);
    let _ = serde_json::from_slice::<locks::RegisterBody>(body);
    let _ = serde_json::from_slice::<admin::SqlBody>(body);
    let _ = serde_json::from_slice::<legacy::LegacyForceBody>(body);
}

#[cfg(test)]
mod tests;
