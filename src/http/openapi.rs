//! The OpenAPI 3.1 document of the HTTP API, served at `/api/v1/openapi.json`.
//!
//! Kept beside the routes (`api::classify`); `tests::every_route_is_documented` fails
//! when a route is added without its entry here.

use serde_json::{json, Value};

fn error_ref() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(schema: Value) -> Value {
    json!({"description": "ok", "content": {"application/json": {"schema": schema}}})
}

fn op(summary: &str, params: Value, body: Option<Value>, response: Value, admin: bool) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": {"200": response, "4XX": error_ref(), "5XX": error_ref()},
    });
    if let Some(b) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": b}}});
    }
    if admin {
        o["security"] = json!([{"adminToken": []}]);
    }
    o
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query_param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}})
}

pub fn document() -> Value {
    let owner = path_param(
        "owner",
        "owner id (conversation or document id): [A-Za-z0-9@+_.-], 1..200 bytes",
    );
    let cid = path_param("conversation_id", "conversation id");
    let field = path_param("field", "lock field; `main` for the main lock");
    let lease = path_param("lease_id", "lease id from acquire");
    let ns = query_param("namespace", "string");
    let lock = json!({"$ref": "#/components/schemas/Lock"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "lockledger", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A registry of file locks: see, explain and safely clear them."},
        "components": {
            "securitySchemes": {
                "userToken": {"type": "http", "scheme": "bearer"},
                "adminToken": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Lock": {"type": "object", "properties": {
                    "namespace": {"type": "string"}, "owner": {"type": "string"}, "field": {"type": "string"},
                    "file": {"type": "string"}, "state": {"enum": ["free", "held", "stale"]},
                    "stale_reason": {"enum": ["holder_dead", "lease_expired", "held_too_long", null]},
                    "kind": {"enum": ["lease", "library", "external", null]},
                    "holder": {"type": ["string", "null"]}, "operation": {"type": ["string", "null"]},
                    "pid": {"type": ["integer", "null"]}, "host": {"type": ["string", "null"]},
                    "thread": {"type": ["string", "null"]}, "command": {"type": ["string", "null"]},
                    "acquired_at": {"type": ["string", "null"], "format": "date-time"},
                    "renewed_at": {"type": ["string", "null"], "format": "date-time"},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                    "age_s": {"type": ["number", "null"]}, "token": {"type": ["integer", "null"]},
                    "revoke_requested": {"type": "boolean"}, "clearable": {"type": "boolean"},
                    "note": {"type": "string"}}},
                "Event": {"type": "object", "properties": {
                    "event_id": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                    "namespace": {"type": "string"}, "owner": {"type": "string"}, "field": {"type": "string"},
                    "event": {"enum": ["acquired", "released", "renewed", "expired", "cleared", "force_cleared",
                                       "reconciled", "wait_timeout", "observed_external"]},
                    "token": {"type": ["integer", "null"]}, "pid": {"type": ["integer", "null"]},
                    "host": {"type": ["string", "null"]}, "holder": {"type": ["string", "null"]},
                    "operation": {"type": ["string", "null"]}, "actor": {"type": ["string", "null"]},
                    "reason": {"type": ["string", "null"]}, "held_ms": {"type": ["integer", "null"]}}}
            }
        },
        "security": [{"userToken": []}],
        "paths": {
            "/get_lock_status/{conversation_id}": {"get": op("Chat app: lock status of a conversation (legacy booleans plus per-lock detail)", json!([cid]), None,
                ok(json!({"type": "object", "properties": {"conversation_id": {"type": "string"},
                    "locks_status": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    "any_locked": {"type": "boolean"}, "stale_locks": {"type": "array", "items": {"type": "string"}},
                    "can_cleanup": {"type": "boolean"}, "locks": {"type": "array", "items": lock}}})), false)},
            "/ensure_locks_cleared/{conversation_id}": {"post": op("Chat app: safe clear of a conversation", json!([cid]), None,
                ok(json!({"type": "object", "properties": {"success": {"type": "boolean"}, "cleared": {"type": "array"}, "skipped": {"type": "array"}, "message": {"type": "string"}}})), false)},
            "/force_clear_locks/{conversation_id}": {"post": op("Chat app: force clear (admin); body {tokens: {field: token}, reason}", json!([cid]),
                Some(json!({"type": "object", "properties": {"tokens": {"type": "object", "additionalProperties": {"type": "integer"}}, "reason": {"type": "string"}}})),
                ok(json!({"type": "object", "properties": {"success": {"type": "boolean"}, "cleared": {"type": "array"}, "warning": {"type": "string"}}})), true)},
            "/clear_locks": {"post": op("Safe clear of every stale lock of every owner (admin)", json!([]), None, ok(json!({"type": "object"})), true)},
            "/api/v1/locks": {"get": op("List known locks", json!([query_param("state", "string"), query_param("owner_prefix", "string"), query_param("limit", "integer"), query_param("cursor", "integer")]), None,
                ok(json!({"type": "object", "properties": {"locks": {"type": "array", "items": lock}, "next_cursor": {"type": ["integer", "null"]}}})), false)},
            "/api/v1/locks/{owner}": {"get": op("One owner's status", json!([owner, ns]), None, ok(json!({"type": "object", "properties": {"namespace": {"type": "string"}, "owner": {"type": "string"}, "locks": {"type": "array", "items": lock}}})), false)},
            "/api/v1/locks/{owner}/{field}/acquire": {"post": op("Acquire a lease (200) or 409 with the holder after wait_ms", json!([owner, field, ns]),
                Some(json!({"type": "object", "required": ["holder", "operation"], "properties": {"holder": {"type": "string"}, "operation": {"type": "string"}, "pid": {"type": "integer"}, "host": {"type": "string"}, "ttl_ms": {"type": "integer"}, "wait_ms": {"type": "integer"}}})),
                ok(json!({"type": "object", "properties": {"lease_id": {"type": "string"}, "token": {"type": "integer"}, "expires_at": {"type": "string"}}})), false)},
            "/api/v1/leases/{lease_id}/renew": {"post": op("Renew a lease; 410 once revoked or expired", json!([lease]), None, ok(json!({"type": "object", "properties": {"expires_at": {"type": "string"}}})), false)},
            "/api/v1/leases/{lease_id}": {"delete": op("Release a lease", json!([lease]), None, ok(json!({"type": "object", "properties": {"released": {"type": "boolean"}, "held_ms": {"type": ["integer", "null"]}}})), false)},
            "/api/v1/locks/{owner}/clear": {"post": op("Safe clear; tokens skip locks that changed since you looked", json!([owner, ns]),
                Some(json!({"type": "object", "properties": {"tokens": {"type": "object", "additionalProperties": {"type": "integer"}}}})), ok(json!({"type": "object"})), false)},
            "/api/v1/locks/{owner}/force-clear": {"post": op("Force clear one lock (admin)", json!([owner, ns]),
                Some(json!({"type": "object", "required": ["field", "token", "reason"], "properties": {"field": {"type": "string"}, "token": {"type": "integer"}, "reason": {"type": "string"}}})), ok(json!({"type": "object"})), true)},
            "/api/v1/fence/check": {"post": op("Is this token still the newest for this lock?", json!([]),
                Some(json!({"type": "object", "required": ["owner", "field", "token"], "properties": {"owner": {"type": "string"}, "field": {"type": "string"}, "token": {"type": "integer"}, "namespace": {"type": "string"}}})),
                ok(json!({"type": "object", "properties": {"current": {"type": "boolean"}, "newest_token": {"type": "integer"}}})), false)},
            "/api/v1/history": {"get": op("History, newest first (format=csv for CSV)", json!([ns, query_param("owner", "string"), query_param("field", "string"), query_param("event", "string"), query_param("holder", "string"), query_param("since", "string"), query_param("until", "string"), query_param("limit", "integer"), query_param("cursor", "integer"), query_param("format", "string")]), None,
                ok(json!({"type": "object", "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "next_cursor": {"type": ["integer", "null"]}}})), false)},
            "/api/v1/sql": {"post": op("Read-only SQL (admin)", json!([]), Some(json!({"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}, "max_rows": {"type": "integer"}}})),
                ok(json!({"type": "object", "properties": {"columns": {"type": "array"}, "rows": {"type": "array"}, "truncated": {"type": "boolean"}}})), true)},
            "/api/v1/waiters": {"get": op("Acquirers waiting in this service, in queue order", json!([]), None, ok(json!({"type": "object"})), false)},
            "/api/v1/reconcile": {"post": op("Repair records of vanished holders (admin)", json!([]), None, ok(json!({"type": "object"})), true)},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": ok(json!({"type": "object"}))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {}}}}}},
            "/healthz": {"get": {"summary": "Health", "security": [], "responses": {"200": ok(json!({"type": "object"})), "503": error_ref()}}},
            "/demo/status": {"get": {"summary": "Is demo mode on? 404 when off", "security": [], "responses": {"200": ok(json!({"type": "object"})), "404": error_ref()}}},
            "/demo/chat/{conversation_id}": {"post": op("Demo: stream a reply while holding the conversation's locks as leases (text/plain stream)", json!([path_param("conversation_id", "conversation id")]),
                Some(json!({"type": "object", "properties": {"message": {"type": "string"}}})), json!({"description": "streamed text", "content": {"text/plain": {}}}), false)},
            "/demo/simulate": {"post": op("Demo: make a crashed, hung or external holder (kind: crashed|hung|external|end)", json!([]),
                Some(json!({"type": "object", "required": ["conversation_id", "kind"], "properties": {"conversation_id": {"type": "string"}, "kind": {"type": "string"}}})), ok(json!({"type": "object"})), false)},
            "/": {"get": {"summary": "Service index (the chat page for browsers)", "security": [], "responses": {"200": ok(json!({"type": "object"}))}}}
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        let api = include_str!("api.rs");
        // Each `[...] => (Route::` arm of classify() must have a documented path.
        for line in api.lines().filter(|l| l.contains("=> (Route::")) {
            let pattern = line.trim().split("=>").next().unwrap().trim();
            let segs: Vec<String> = pattern
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s.starts_with('"') {
                        s.trim_matches('"').to_string()
                    } else {
                        "{}".to_string()
                    }
                })
                .collect();
            let found = paths.keys().any(|p| {
                let ps: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
                ps.len() == segs.len()
                    && ps
                        .iter()
                        .zip(&segs)
                        .all(|(a, b)| (b == "{}" && a.starts_with('{')) || a == b)
            });
            assert!(found, "route {pattern} has no OpenAPI entry");
        }
    }
}
