//! The route table's own checks: every route has one entry, templates match segment by
//! segment, and a literal segment is never captured.

use super::*;

fn segs(path: &str) -> Vec<String> {
    super::super::decode::split_path(path).unwrap()
}

#[test]
fn paths_route_with_their_captures() {
    let (spec, captured) = find(
        &Method::POST,
        &segs("/api/v1/locks/user%40x.com_1/main/acquire"),
    )
    .unwrap();
    assert_eq!(spec.id, RouteId::Acquire);
    assert_eq!(captured, ["user@x.com_1", "main"]);
    assert_eq!(
        find(&Method::GET, &segs("/ensure_locks_cleared/c1")).unwrap_err(),
        NoRoute::WrongMethod(Method::POST)
    );
    assert_eq!(
        find(&Method::GET, &segs("/nope")).unwrap_err(),
        NoRoute::NotFound
    );
    // A literal segment is never captured: /api/v1/locks/x/clear is Clear, not Status.
    let (spec, _) = find(&Method::POST, &segs("/api/v1/locks/x/clear")).unwrap();
    assert_eq!(spec.id, RouteId::Clear);
    // One segment more or fewer than every template fits nothing.
    for path in [
        "/api/v1/locks/c1/messages/acquire/more",
        "/api/v1/locks/c1/messages/x/acquire",
        "/api/v1/leases",
        "/api",
    ] {
        assert_eq!(
            find(&Method::POST, &segs(path)).map(|(s, _)| s.id),
            Err(NoRoute::NotFound),
            "{path}"
        );
    }
}

#[test]
fn one_entry_per_route_and_captures_described() {
    let mut seen = std::collections::HashSet::new();
    for spec in ROUTES {
        assert!(seen.insert(spec.id), "{spec:?} listed twice");
        let captures = spec.path.matches('{').count();
        assert_eq!(captures, spec.path_params.len(), "{spec:?}");
    }
    assert_eq!(seen.len(), 25, "a RouteId without an entry");
}
