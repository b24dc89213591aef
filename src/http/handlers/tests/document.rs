//! Real answers against the API document: every JSON route's answer and errors are
//! validated against the schema the document gives for it, with every object closed.

use super::*;

/// The document with every object schema closed (`additionalProperties: false`), so a
/// real answer with a key the document does not name fails too.
fn closed(doc: &Value) -> Value {
    fn close(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut doc = doc.clone();
    close(&mut doc);
    doc
}

/// A validator for the schema the document gives `schema` (a `$ref` into components).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("bad schema {schema}: {e}"))
}

fn ok_schema(doc: &Value, path: &str, method: &str) -> Value {
    doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"].clone()
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), true);
    let routes = routes(Arc::clone(&app));
    let doc: Value = serde_json::to_value(crate::http::openapi::document()).unwrap();
    let error_schema = json!({"$ref": "#/components/schemas/ErrorBody"});
    let errors = validator(&doc, &error_schema);
    let closed_doc = closed(&doc);

    // Something to report: a library holder that is alive, one lease, some history.
    let reg = app.registry.clone();
    let key = reg.key(None, "c1", "memory").unwrap();
    let guard = reg
        .acquire(&key, &AcquireOptions::new("tester", "hold"))
        .unwrap();
    let admin = "Bearer test-admin-token";
    let grant = request("POST", "/api/v1/locks/c1/messages/acquire")
        .header("content-type", "application/json")
        .body(r#"{"holder":"t","operation":"op","ttl_ms":5000}"#)
        .reply(&routes)
        .await;
    let lease = json_of(&grant)["lease_id"].as_str().unwrap().to_string();
    let token = json_of(&grant)["token"].as_i64().unwrap();
    let doomed = request("POST", "/api/v1/locks/c2/messages/acquire")
        .header("content-type", "application/json")
        .body(r#"{"holder":"t","operation":"op"}"#)
        .reply(&routes)
        .await;
    assert_eq!(doomed.status(), 200);
    let lease_2 = {
        let g = request("POST", "/api/v1/locks/c4/messages/acquire")
            .header("content-type", "application/json")
            .body(r#"{"holder":"t","operation":"op"}"#)
            .reply(&routes)
            .await;
        json_of(&g)["lease_id"].as_str().unwrap().to_string()
    };

    // A symlink on a configured key and a FIFO on a key that is not configured: reported
    // per lock (state `unsafe`), in the documented shape of every status and clear answer.
    let locks = app.registry.config().locks_dir();
    std::os::unix::fs::symlink("/nonexistent-target", locks.join("c1_all.lock")).unwrap();
    let fifo = std::ffi::CString::new(locks.join("c1_summaries.lock").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    // A process that holds a lock file itself (this one) registers, then unregisters.
    let own_file = app.registry.config().locks_dir().join("c5_messages.lock");
    let own_flock = crate::kernel::flock::try_acquire(&own_file, 0o600)
        .unwrap()
        .unwrap();
    let registration = request("POST", "/api/v1/locks/c5/messages/register")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"pid":{},"holder":"app","operation":"save"}}"#,
            std::process::id()
        ))
        .reply(&routes)
        .await;
    assert_eq!(registration.status(), 200, "{:?}", registration.body());
    let registration_id = json_of(&registration)["registration_id"]
        .as_str()
        .unwrap()
        .to_string();

    // (route, method, path, body, admin?) — every JSON route, in an order that works.
    let calls: Vec<(RouteId, &str, String, Option<String>, bool)> = vec![
        (RouteId::Index, "GET", "/".into(), None, false),
        (RouteId::Health, "GET", "/healthz".into(), None, false),
        (
            RouteId::OpenApi,
            "GET",
            "/api/v1/openapi.json".into(),
            None,
            false,
        ),
        (
            RouteId::LegacyStatus,
            "GET",
            "/get_lock_status/c1".into(),
            None,
            false,
        ),
        (RouteId::List, "GET", "/api/v1/locks".into(), None, false),
        (
            RouteId::OwnerStatus,
            "GET",
            "/api/v1/locks/c1".into(),
            None,
            false,
        ),
        (
            RouteId::Acquire,
            "POST",
            "/api/v1/locks/c3/all/acquire".into(),
            Some(r#"{"holder":"t","operation":"op"}"#.into()),
            false,
        ),
        (
            RouteId::Renew,
            "POST",
            format!("/api/v1/leases/{lease}/renew"),
            None,
            false,
        ),
        (
            RouteId::Fence,
            "POST",
            "/api/v1/fence/check".into(),
            Some(format!(
                r#"{{"owner":"c1","field":"messages","token":{token}}}"#
            )),
            false,
        ),
        (
            RouteId::History,
            "GET",
            "/api/v1/history?owner=c1".into(),
            None,
            false,
        ),
        (
            RouteId::Sql,
            "POST",
            "/api/v1/sql".into(),
            Some(r#"{"sql":"SELECT owner, token FROM current_locks"}"#.into()),
            true,
        ),
        (
            RouteId::Waiters,
            "GET",
            "/api/v1/waiters".into(),
            None,
            false,
        ),
        (
            RouteId::Reconcile,
            "POST",
            "/api/v1/reconcile".into(),
            None,
            true,
        ),
        (
            RouteId::LegacyEnsureCleared,
            "POST",
            "/ensure_locks_cleared/c1".into(),
            None,
            false,
        ),
        (
            RouteId::Clear,
            "POST",
            "/api/v1/locks/c1/clear".into(),
            Some("{}".into()),
            false,
        ),
        (
            RouteId::LegacyClearAll,
            "POST",
            "/clear_locks".into(),
            None,
            true,
        ),
        (
            RouteId::LegacyForceClear,
            "POST",
            "/force_clear_locks/c2".into(),
            Some(r#"{"tokens":{"messages":1},"reason":"test"}"#.into()),
            true,
        ),
        (
            RouteId::ForceClear,
            "POST",
            "/api/v1/locks/c1/force-clear".into(),
            Some(format!(
                r#"{{"field":"messages","token":{token},"reason":"test"}}"#
            )),
            true,
        ),
        (
            RouteId::Release,
            "DELETE",
            format!("/api/v1/leases/{lease_2}"),
            None,
            false,
        ),
        (
            RouteId::Register,
            "POST",
            "/api/v1/locks/c6/all/register".into(),
            Some(format!(
                r#"{{"pid":{},"holder":"app","operation":"save"}}"#,
                std::process::id()
            )),
            false,
        ),
        (
            RouteId::Unregister,
            "DELETE",
            format!("/api/v1/registrations/{registration_id}"),
            None,
            false,
        ),
        (
            RouteId::DemoStatus,
            "GET",
            "/demo/status".into(),
            None,
            false,
        ),
        (
            RouteId::DemoSimulate,
            "POST",
            "/demo/simulate".into(),
            Some(r#"{"conversation_id":"c9","kind":"end"}"#.into()),
            false,
        ),
    ];
    let own_flock_2 = crate::kernel::flock::try_acquire(
        &app.registry.config().locks_dir().join("c6_all.lock"),
        0o600,
    )
    .unwrap()
    .unwrap();
    let mut covered = HashSet::new();
    for (id, method, path, body, as_admin) in calls {
        let spec = ROUTES.iter().find(|s| s.id == id).unwrap();
        let mut r = request(method, &path).header("accept", "application/json");
        if method != "GET" {
            r = r.header("content-type", "application/json");
        }
        if as_admin {
            r = r.header("authorization", admin);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.reply(&routes).await;
        let body: Value = serde_json::from_slice(resp.body())
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e})"));
        assert_eq!(resp.status(), 200, "{method} {path}: {body}");
        let schema = ok_schema(&doc, spec.path, &method.to_ascii_lowercase());
        assert!(!schema.is_null(), "{method} {path}: no documented answer");
        let v = validator(&closed_doc, &schema);
        let problems: Vec<String> = v.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(
            problems.is_empty(),
            "{method} {path} answered {body}\nwhich the document does not allow: {problems:?}"
        );
        covered.insert(id);
    }
    for spec in ROUTES {
        if matches!(spec.answer, Answer::Json(_) | Answer::JsonOrCsv(_)) {
            assert!(covered.contains(&spec.id), "{spec:?} is not checked");
        }
    }
    // The check can fail: an extra key, a missing one, a wrong type.
    let index = validator(&closed_doc, &ok_schema(&doc, "/", "get"));
    let good = json!({"service": "s", "version": "1", "api": "a", "health": "h", "ui": "u", "history": "h"});
    assert!(index.is_valid(&good));
    let mut extra = good.clone();
    extra["surprise"] = json!(1);
    assert!(!index.is_valid(&extra));
    assert!(!index.is_valid(&json!({"service": "s"})));
    let mut wrong = good.clone();
    wrong["version"] = json!(1);
    assert!(!index.is_valid(&wrong));
    // Errors have the documented shape too, detail fields included.
    for (method, path, body) in [
        ("GET", "/api/v1/locks/..%2Fetc", None),
        (
            "POST",
            "/api/v1/locks/c1/memory/acquire",
            Some(r#"{"holder":"u","operation":"o"}"#),
        ),
        (
            "POST",
            "/api/v1/leases/0123456789abcdef0123456789abcdef/renew",
            None,
        ),
        ("GET", "/api/v1/history?limit=0", None),
    ] {
        let mut r = request(method, path).header("content-type", "application/json");
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.reply(&routes).await;
        assert!(resp.status().is_client_error(), "{method} {path}");
        let body = json_of(&resp);
        let problems: Vec<String> = errors.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(problems.is_empty(), "{method} {path}: {body} {problems:?}");
    }
    // The unsafe files were in those answers, each on its own lock.
    let status = json_of(&request("GET", "/api/v1/locks/c1").reply(&routes).await);
    let states: Vec<(&str, &str)> = status["locks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| Some((l["field"].as_str()?, l["state"].as_str()?)))
        .collect();
    assert!(states.contains(&("all", "unsafe")), "{status}");
    assert!(states.contains(&("summaries", "unsafe")), "{status}");
    drop(guard);
    drop(own_flock);
    drop(own_flock_2);
}

#[test]
fn the_history_event_parameter_names_every_event() {
    let doc: Value = serde_json::to_value(crate::http::openapi::document()).unwrap();
    let params = doc["paths"]["/api/v1/history"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let event = params.iter().find(|p| p["name"] == "event").unwrap();
    let text = event["description"].as_str().unwrap();
    for kind in crate::store::history::EventKind::ALL {
        assert!(
            text.contains(kind.as_str()),
            "{} missing from {text:?}",
            kind.as_str()
        );
    }
}
