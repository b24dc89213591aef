//! The route table: the one list of what the service answers. The router ([`find`]), the
//! OpenAPI document (`openapi`) and its tests all read [`ROUTES`], so a route cannot
//! exist undocumented, and each route's documented body and answer are the very serde
//! types its handler decodes and renders.
//!
//! Invariants: every [`RouteId`] has exactly one entry
//! (`tests::one_entry_per_route_and_captures_described`); path templates are literal
//! segments and `{name}` captures, matched segment by segment after percent-decoding; a
//! path that matches with another method is a 405 naming it.

use super::decode::NoQuery;
use super::security::Role;
use utoipa::openapi::path::Parameter;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};
use warp::http::Method;

/// Every route the service has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Index,
    Health,
    OpenApi,
    Metrics,
    LegacyStatus,
    LegacyEnsureCleared,
    LegacyForceClear,
    LegacyClearAll,
    List,
    OwnerStatus,
    Acquire,
    Renew,
    Release,
    Clear,
    ForceClear,
    Fence,
    Register,
    Unregister,
    History,
    Sql,
    Waiters,
    Reconcile,
    DemoStatus,
    DemoChat,
    DemoSimulate,
}

/// Schemas referenced from a route, collected into the document's components.
pub type Components = Vec<(String, RefOr<Schema>)>;

/// A schema for the document: `$ref` to a component, registering it (and the types it
/// refers to) in `components`.
pub type SchemaFn = fn(&mut Components) -> RefOr<Schema>;

/// The schema of `T` (a serde type deriving `ToSchema`).
pub fn schema<T: ToSchema>(components: &mut Components) -> RefOr<Schema> {
    T::schemas(components);
    components.push((T::name().into_owned(), T::schema()));
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
}

/// The query parameters of `T` (a struct deriving `IntoParams`).
pub fn params<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
}

/// What a successful answer is.
#[derive(Clone, Copy)]
pub enum Answer {
    /// JSON of this schema.
    Json(SchemaFn),
    /// JSON, or CSV with `?format=csv`.
    JsonOrCsv(SchemaFn),
    /// Another content type (Prometheus text, a text stream).
    Text(&'static str),
}

/// A JSON request body; `optional` when an empty body means "no options".
#[derive(Clone, Copy)]
pub struct Body {
    pub schema: SchemaFn,
    pub optional: bool,
}

/// One route: what it matches, who may call it, and what it takes and answers.
#[derive(Clone)]
pub struct RouteSpec {
    pub id: RouteId,
    pub method: Method,
    /// `/api/v1/locks/{owner}/{field}/acquire`: literal segments and `{captures}`.
    pub path: &'static str,
    pub role: Role,
    pub summary: &'static str,
    /// Path parameter descriptions, in the order of the captures.
    pub path_params: &'static [&'static str],
    pub query: fn() -> Vec<Parameter>,
    pub body: Option<Body>,
    pub answer: Answer,
}

impl std::fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

use super::decode::NamespaceQuery;
use super::error::ErrorBody;
use super::handlers::{admin, history, legacy, locks, ops};
use crate::registry::{FenceCheck, OwnerStatus, ReconcileReport};
use crate::store::console::SqlResult;

const OWNER: &str = "owner id (conversation or document id): [A-Za-z0-9@+_.-], 1..200 bytes";
const CONVERSATION: &str = "conversation id";
const FIELD: &str = "lock field; `main` for the main lock";
const LEASE: &str = "lease id from acquire";

const fn route(
    id: RouteId,
    method: Method,
    path: &'static str,
    role: Role,
    summary: &'static str,
) -> RouteSpec {
    RouteSpec {
        id,
        method,
        path,
        role,
        summary,
        path_params: &[],
        query: params::<NoQuery>,
        body: None,
        answer: Answer::Json(schema::<ErrorBody>),
    }
}

impl RouteSpec {
    const fn captures(mut self, names: &'static [&'static str]) -> RouteSpec {
        self.path_params = names;
        self
    }
    const fn query(mut self, q: fn() -> Vec<Parameter>) -> RouteSpec {
        self.query = q;
        self
    }
    const fn body(mut self, schema: SchemaFn) -> RouteSpec {
        self.body = Some(Body {
            schema,
            optional: false,
        });
        self
    }
    const fn optional_body(mut self, schema: SchemaFn) -> RouteSpec {
        self.body = Some(Body {
            schema,
            optional: true,
        });
        self
    }
    const fn answers(mut self, a: Answer) -> RouteSpec {
        self.answer = a;
        self
    }
}

use Answer::{Json, JsonOrCsv, Text};
use Role::{Admin, Anyone, User};
use RouteId as R;

/// The routes, in the order the document lists them.
pub const ROUTES: &[RouteSpec] = &[
    route(
        R::Index,
        Method::GET,
        "/",
        Anyone,
        "Service index (browsers get the chat page)",
    )
    .answers(Json(schema::<ops::Index>)),
    route(R::Health, Method::GET, "/healthz", Anyone, "Health")
        .answers(Json(schema::<ops::Health>)),
    route(
        R::OpenApi,
        Method::GET,
        "/api/v1/openapi.json",
        Anyone,
        "This document",
    )
    .answers(Json(schema::<ops::Document>)),
    route(
        R::Metrics,
        Method::GET,
        "/metrics",
        User,
        "Prometheus metrics",
    )
    .answers(Text("text/plain")),
    route(
        R::LegacyStatus,
        Method::GET,
        "/get_lock_status/{conversation_id}",
        User,
        "Chat app: lock status of a conversation (legacy booleans plus per-lock detail)",
    )
    .captures(&[CONVERSATION])
    .answers(Json(schema::<legacy::LegacyStatus>)),
    route(
        R::LegacyEnsureCleared,
        Method::POST,
        "/ensure_locks_cleared/{conversation_id}",
        User,
        "Chat app: safe clear of a conversation (an empty JSON body is fine)",
    )
    .captures(&[CONVERSATION])
    .optional_body(schema::<locks::ClearBody>)
    .answers(Json(schema::<legacy::LegacyCleared>)),
    route(
        R::LegacyForceClear,
        Method::POST,
        "/force_clear_locks/{conversation_id}",
        Admin,
        "Chat app: force clear (admin) of the grants named by their tokens",
    )
    .captures(&[CONVERSATION])
    .optional_body(schema::<legacy::LegacyForceBody>)
    .answers(Json(schema::<legacy::LegacyForceCleared>)),
    route(
        R::LegacyClearAll,
        Method::POST,
        "/clear_locks",
        Admin,
        "Safe clear of every stale lock of every owner (admin)",
    )
    .optional_body(schema::<locks::ClearBody>)
    .answers(Json(schema::<legacy::ClearedAll>)),
    route(
        R::List,
        Method::GET,
        "/api/v1/locks",
        User,
        "List known locks",
    )
    .query(params::<locks::ListQuery>)
    .answers(Json(schema::<locks::LockList>)),
    route(
        R::OwnerStatus,
        Method::GET,
        "/api/v1/locks/{owner}",
        User,
        "One owner's status",
    )
    .captures(&[OWNER])
    .query(params::<NamespaceQuery>)
    .answers(Json(schema::<OwnerStatus>)),
    route(
        R::Acquire,
        Method::POST,
        "/api/v1/locks/{owner}/{field}/acquire",
        User,
        "Acquire a lease (200), or 409 with the holder after wait_ms",
    )
    .captures(&[OWNER, FIELD])
    .query(params::<NamespaceQuery>)
    .body(schema::<locks::AcquireBody>)
    .answers(Json(schema::<locks::Acquired>)),
    route(
        R::Renew,
        Method::POST,
        "/api/v1/leases/{lease_id}/renew",
        User,
        "Renew a lease by its ttl; 410 once revoked or expired",
    )
    .captures(&[LEASE])
    .answers(Json(schema::<locks::Renewed>)),
    route(
        R::Release,
        Method::DELETE,
        "/api/v1/leases/{lease_id}",
        User,
        "Release a lease",
    )
    .captures(&[LEASE])
    .answers(Json(schema::<locks::Released>)),
    route(
        R::Clear,
        Method::POST,
        "/api/v1/locks/{owner}/clear",
        User,
        "Safe clear; tokens skip locks that changed since you looked",
    )
    .captures(&[OWNER])
    .query(params::<NamespaceQuery>)
    .optional_body(schema::<locks::ClearBody>)
    .answers(Json(schema::<locks::Cleared>)),
    route(
        R::ForceClear,
        Method::POST,
        "/api/v1/locks/{owner}/force-clear",
        Admin,
        "Force clear one grant (admin): its exact token and a reason",
    )
    .captures(&[OWNER])
    .query(params::<NamespaceQuery>)
    .body(schema::<locks::ForceBody>)
    .answers(Json(schema::<locks::ForceClearedAnswer>)),
    route(
        R::Fence,
        Method::POST,
        "/api/v1/fence/check",
        User,
        "Is this token still the newest grant of this lock?",
    )
    .body(schema::<locks::FenceBody>)
    .answers(Json(schema::<FenceCheck>)),
    route(
        R::Register,
        Method::POST,
        "/api/v1/locks/{owner}/{field}/register",
        User,
        "Record a process that took the lock file's flock itself (checked in /proc/locks)",
    )
    .captures(&[OWNER, FIELD])
    .query(params::<NamespaceQuery>)
    .body(schema::<locks::RegisterBody>)
    .answers(Json(schema::<crate::registry::Registration>)),
    route(
        R::Unregister,
        Method::DELETE,
        "/api/v1/registrations/{registration_id}",
        User,
        "End a registration (its process let go of the lock)",
    )
    .captures(&["registration id from register"])
    .answers(Json(schema::<locks::Released>)),
    route(
        R::History,
        Method::GET,
        "/api/v1/history",
        User,
        "History, newest first (format=csv for CSV)",
    )
    .query(params::<history::HistoryParams>)
    .answers(JsonOrCsv(schema::<history::HistoryPage>)),
    route(
        R::Sql,
        Method::POST,
        "/api/v1/sql",
        Admin,
        "One read-only SQL statement (admin)",
    )
    .body(schema::<admin::SqlBody>)
    .answers(Json(schema::<SqlResult>)),
    route(
        R::Waiters,
        Method::GET,
        "/api/v1/waiters",
        User,
        "Acquirers waiting in this service, in queue order",
    )
    .answers(Json(schema::<admin::Waiters>)),
    route(
        R::Reconcile,
        Method::POST,
        "/api/v1/reconcile",
        Admin,
        "Repair records of vanished holders now (admin)",
    )
    .answers(Json(schema::<ReconcileReport>)),
    route(
        R::DemoStatus,
        Method::GET,
        "/demo/status",
        Anyone,
        "Is demo mode on? 404 when off",
    )
    .answers(Json(schema::<crate::http::demo::DemoStatus>)),
    route(
        R::DemoChat,
        Method::POST,
        "/demo/chat/{conversation_id}",
        User,
        "Demo: stream a reply while holding the conversation's locks as leases",
    )
    .captures(&[CONVERSATION])
    .body(schema::<crate::http::demo::ChatBody>)
    .answers(Text("text/plain")),
    route(
        R::DemoSimulate,
        Method::POST,
        "/demo/simulate",
        User,
        "Demo: make a crashed, hung or external holder (kind: crashed|hung|external|end)",
    )
    .body(schema::<crate::http::demo::SimulateBody>)
    .answers(Json(schema::<crate::http::demo::Simulated>)),
];

/// Why no route answered.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    NotFound,
    /// The path exists with this other method.
    WrongMethod(Method),
}

/// Each route's template split into segments once (literals and `{name}` captures), in
/// the order of [`ROUTES`].
static TEMPLATES: std::sync::LazyLock<Vec<Vec<&'static str>>> = std::sync::LazyLock::new(|| {
    ROUTES
        .iter()
        .map(|spec| spec.path.split('/').filter(|s| !s.is_empty()).collect())
        .collect()
});

/// The route for a method and decoded path segments, with the captured values.
pub fn find(
    method: &Method,
    segs: &[String],
) -> Result<(&'static RouteSpec, Vec<String>), NoRoute> {
    let mut other_method = None;
    for (spec, parts) in ROUTES.iter().zip(TEMPLATES.iter()) {
        if !fits(parts, segs) {
            continue;
        }
        if spec.method == *method {
            let captured = parts
                .iter()
                .zip(segs)
                .filter(|(part, _)| part.starts_with('{'))
                .map(|(_, seg)| seg.clone())
                .collect();
            return Ok((spec, captured));
        }
        other_method.get_or_insert(spec.method.clone());
    }
    Err(other_method.map_or(NoRoute::NotFound, NoRoute::WrongMethod))
}

/// Do the segments fit the template? Every request tries the routes in turn, so this
/// allocates nothing.
fn fits(parts: &[&str], segs: &[String]) -> bool {
    parts.len() == segs.len()
        && parts
            .iter()
            .zip(segs)
            .all(|(part, seg)| part.starts_with('{') || part == seg)
}

#[cfg(test)]
mod tests;
