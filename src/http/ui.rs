//! The web UI, compiled into the binary: the chat page with the Settings modal's Lock
//! Status button, the lock-history audit page, and the drop-in widget.
//!
//! Invariant: exactly the files in [`ASSETS`] are served, from memory (no filesystem
//! access at request time, so no path can be asked for); `tests::every_web_file_is_served`
//! keeps the list and `web/` in step. Pages are sent with a Content-Security-Policy that
//! allows only this origin's scripts, so injected markup could not run code.

use super::error::{text_response, Response};
use warp::http::{HeaderValue, StatusCode};

/// (URL path, file under web/, content type, content)
pub const ASSETS: &[(&str, &str, &str, &str)] = &[
    (
        "/ui/",
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/ui/history",
        "history.html",
        "text/html; charset=utf-8",
        include_str!("../../web/history.html"),
    ),
    (
        "/ui/app.css",
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    (
        "/ui/app.js",
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "/ui/history.js",
        "history.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/history.js"),
    ),
    (
        "/ui/timeline.js",
        "timeline.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/timeline.js"),
    ),
    (
        "/ui/widget/lockledger.js",
        "widget/lockledger.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/widget/lockledger.js"),
    ),
    (
        "/ui/widget/lockledger.css",
        "widget/lockledger.css",
        "text/css; charset=utf-8",
        include_str!("../../web/widget/lockledger.css"),
    ),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The asset at `path` (`/ui` and `/ui/index.html` mean the chat page).
pub fn asset(path: &str) -> Option<Response> {
    let path = match path {
        "/ui" | "/ui/index.html" => "/ui/",
        "/ui/history.html" => "/ui/history",
        other => other,
    };
    let (_, _, content_type, body) = ASSETS.iter().find(|(p, ..)| *p == path)?;
    let mut resp = text_response(StatusCode::OK, content_type, body.to_string());
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    if content_type.starts_with("text/html") {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    }
    Some(resp)
}

/// Does this request come from a browser that wants a page?
pub fn wants_html(headers: &warp::http::HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_web_file_is_served() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk.push(
                        p.strip_prefix(&root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|(_, f, ..)| f.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn pages_carry_a_strict_policy() {
        let page = asset("/ui/").unwrap();
        let csp = page.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"));
        assert!(asset("/ui/../Cargo.toml").is_none());
        assert!(asset("/ui/widget/lockledger.js").is_some());
    }
}
