//! Handler tests through warp's test client: the same filter the server runs, with no
//! socket in between. `document` checks every JSON route's real answer (and real errors)
//! against the schema the API document gives for it.

use crate::config::Config;
use crate::http::routes::{Answer, RouteId, ROUTES};
use crate::http::{app_for, routes, App, ServeOptions};
use crate::registry::{AcquireOptions, Registry};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

fn app(dir: &std::path::Path, demo: bool) -> Arc<App> {
    let registry = Registry::open(Config::defaults(dir)).unwrap();
    let opts = ServeOptions {
        bind: "127.0.0.1:8787".parse().unwrap(),
        user_token: None,
        admin_token: Some("test-admin-token".into()),
        allowed_hosts: vec![],
        allowed_origins: vec![],
        demo,
        access_log: false,
        max_connections: 64,
        header_timeout: std::time::Duration::from_secs(10),
    };
    app_for(registry, &opts, 8787).unwrap()
}

fn request(method: &str, path: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method(method)
        .path(path)
        .header("host", "127.0.0.1:8787")
}

fn json_of(resp: &warp::http::Response<Bytes>) -> Value {
    serde_json::from_slice(resp.body()).unwrap()
}

#[tokio::test]
async fn legacy_status_has_the_chat_apps_keys() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(app(dir.path(), false));
    let resp = request("GET", "/get_lock_status/conv42")
        .reply(&routes)
        .await;
    assert_eq!(resp.status(), 200);
    let v = json_of(&resp);
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
            "artefacts",
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
    let routes = routes(app(dir.path(), false));
    let ok = request("POST", "/ensure_locks_cleared/conv42")
        .header("content-type", "application/json")
        .reply(&routes)
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(json_of(&ok)["success"], true);
    let form = request("POST", "/ensure_locks_cleared/conv42")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .reply(&routes)
        .await;
    assert_eq!(form.status(), 415);
    assert_eq!(json_of(&form)["error"]["code"], "json_required");
}

#[tokio::test]
async fn lease_round_trip_and_errors_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(app(dir.path(), false));
    let grant = request("POST", "/api/v1/locks/c1/messages/acquire")
        .header("content-type", "application/json")
        .body(r#"{"holder":"t","operation":"op","ttl_ms":5000}"#)
        .reply(&routes)
        .await;
    assert_eq!(grant.status(), 200);
    let lease = json_of(&grant)["lease_id"].as_str().unwrap().to_string();
    let busy = request("POST", "/api/v1/locks/c1/messages/acquire")
        .header("content-type", "application/json")
        .body(r#"{"holder":"u","operation":"op2"}"#)
        .reply(&routes)
        .await;
    assert_eq!(busy.status(), 409);
    assert_eq!(json_of(&busy)["holder"]["operation"], "op");
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
        assert!(json_of(&resp)["error"]["message"].is_string());
    }
    let foreign = warp::test::request()
        .path("/healthz")
        .header("host", "evil.example:8787")
        .reply(&routes)
        .await;
    assert_eq!(foreign.status(), 403);
}

mod document;
