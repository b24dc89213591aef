//! Who may call what, and from where: tokens, roles, the Host/Origin check and the
//! CSRF rule for state-changing requests.
//!
//! Invariants:
//! - Admin routes (force clear, global clear, SQL, reconcile) need the admin token.
//! - User routes need the user token when one is configured; a loopback-only service
//!   without a user token serves local callers.
//! - The Host header must name this service (a loopback name or an IP literal with our
//!   port, or a name given with `--allow-host`): a DNS-rebinding page's Host is its own
//!   domain and is refused. A browser's Origin, when sent, must match the same list.
//! - POST and DELETE need `Content-Type: application/json` or an `X-Lockledger-Client`
//!   header; a cross-site form can send neither without a CORS preflight, and no CORS is
//!   ever offered. GET never changes state.

use std::net::{IpAddr, SocketAddr};
use warp::http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Anyone,
    User,
    Admin,
}

#[derive(Debug, Clone)]
pub struct SecurityPolicy {
    pub user_token: Option<String>,
    pub admin_token: String,
    /// Extra Host names allowed (exact `name` or `name:port`), from `--allow-host`.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides this service's own (`--allow-origin`), e.g.
    /// `https://chat.example.com` when a proxy passes the chat app's pages' requests on.
    pub allowed_origins: Vec<String>,
    pub port: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    ForeignHost(String),
    ForeignOrigin(String),
    Unauthenticated,
    NotAdmin,
    NoJsonOrHeader,
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get("x-lockledger-token")
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.trim());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

impl SecurityPolicy {
    /// The role the request's token grants.
    pub fn role_of(&self, headers: &HeaderMap) -> Role {
        match presented_token(headers) {
            Some(t) if same(t, &self.admin_token) => Role::Admin,
            Some(t) if self.user_token.as_deref().is_some_and(|u| same(t, u)) => Role::User,
            _ if self.user_token.is_none() => Role::User,
            _ => Role::Anyone,
        }
    }

    /// 401 for callers without a valid token, 403 for users on admin routes.
    pub fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<Role, Denied> {
        match self.role_of(headers) {
            role if role >= needed => Ok(role),
            Role::User => Err(Denied::NotAdmin),
            _ => Err(Denied::Unauthenticated),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return true;
        }
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !n.ends_with(':') && (n.starts_with('[') || !n.contains(':')) => {
                (n, p.parse::<u16>().ok())
            }
            _ => (host.as_str(), None),
        };
        let port_ok = port == Some(self.port) || (port.is_none() && self.port == 80);
        if !port_ok {
            return false;
        }
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        // IP literals cannot be rebound by DNS; `localhost` resolves locally.
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        name == "localhost" || bare.parse::<IpAddr>().is_ok()
    }

    /// Host and Origin checks, for every request.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.host_allowed(host) {
            return Err(Denied::ForeignHost(host.chars().take(100).collect()));
        }
        if let Some(origin) = headers.get("origin") {
            let origin = origin.to_str().unwrap_or("");
            let listed = self
                .allowed_origins
                .iter()
                .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin));
            let ok = listed
                || origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|h| self.host_allowed(h));
            if !ok {
                return Err(Denied::ForeignOrigin(origin.chars().take(100).collect()));
            }
        }
        Ok(())
    }

    /// The CSRF rule for POST and DELETE.
    pub fn check_state_change(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if json || headers.contains_key("x-lockledger-client") {
            Ok(())
        } else {
            Err(Denied::NoJsonOrHeader)
        }
    }
}

/// Is this bind address reachable only from this machine?
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// 256 random bits as hex, for generated admin tokens.
pub fn random_token() -> Result<String, getrandom::Error> {
    crate::random::hex(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn policy(user: Option<&str>) -> SecurityPolicy {
        SecurityPolicy {
            user_token: user.map(str::to_string),
            admin_token: "admin-secret".into(),
            allowed_hosts: vec!["chat.internal".into()],
            allowed_origins: vec!["https://chat.example.com".into()],
            port: 8787,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts() {
        let p = policy(None);
        for ok in [
            "127.0.0.1:8787",
            "localhost:8787",
            "[::1]:8787",
            "10.1.2.3:8787",
            "chat.internal:8787",
            "chat.internal",
        ] {
            assert!(p.check_origin(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in [
            "evil.com:8787",
            "127.0.0.1:9999",
            "",
            "localhost.evil.com:8787",
            "evil.com",
        ] {
            assert!(p.check_origin(&headers(&[("host", bad)])).is_err(), "{bad}");
        }
        let foreign_origin = headers(&[("host", "127.0.0.1:8787"), ("origin", "http://evil.com")]);
        assert!(matches!(
            p.check_origin(&foreign_origin),
            Err(Denied::ForeignOrigin(_))
        ));
        let null_origin = headers(&[("host", "127.0.0.1:8787"), ("origin", "null")]);
        assert!(p.check_origin(&null_origin).is_err());
        let same_origin = headers(&[
            ("host", "127.0.0.1:8787"),
            ("origin", "http://127.0.0.1:8787"),
        ]);
        assert!(p.check_origin(&same_origin).is_ok());
        // A proxied page's origin, when listed with --allow-origin.
        let proxied = headers(&[
            ("host", "127.0.0.1:8787"),
            ("origin", "https://chat.example.com"),
        ]);
        assert!(p.check_origin(&proxied).is_ok());
        let lookalike = headers(&[
            ("host", "127.0.0.1:8787"),
            ("origin", "https://chat.example.com.evil.com"),
        ]);
        assert!(p.check_origin(&lookalike).is_err());
    }

    #[test]
    fn roles() {
        let open = policy(None);
        assert_eq!(open.authorize(&headers(&[]), Role::User), Ok(Role::User));
        assert_eq!(
            open.authorize(&headers(&[]), Role::Admin),
            Err(Denied::NotAdmin)
        );
        assert_eq!(
            open.authorize(
                &headers(&[("authorization", "Bearer admin-secret")]),
                Role::Admin
            ),
            Ok(Role::Admin)
        );
        let closed = policy(Some("user-secret"));
        assert_eq!(
            closed.authorize(&headers(&[]), Role::User),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            closed.authorize(&headers(&[("x-lockledger-token", "wrong")]), Role::User),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            closed.authorize(
                &headers(&[("x-lockledger-token", "user-secret")]),
                Role::User
            ),
            Ok(Role::User)
        );
        assert_eq!(
            closed.authorize(
                &headers(&[("x-lockledger-token", "user-secret")]),
                Role::Admin
            ),
            Err(Denied::NotAdmin)
        );
        assert_eq!(
            closed.authorize(
                &headers(&[("x-lockledger-token", "admin-secret")]),
                Role::User
            ),
            Ok(Role::Admin)
        );
    }

    #[test]
    fn csrf_rule() {
        let p = policy(None);
        assert!(p
            .check_state_change(&headers(&[("content-type", "application/json")]))
            .is_ok());
        assert!(p
            .check_state_change(&headers(&[(
                "content-type",
                "application/json; charset=utf-8"
            )]))
            .is_ok());
        assert!(p
            .check_state_change(&headers(&[("x-lockledger-client", "py")]))
            .is_ok());
        assert!(p
            .check_state_change(&headers(&[("content-type", "text/plain")]))
            .is_err());
        assert!(p
            .check_state_change(&headers(&[(
                "content-type",
                "application/x-www-form-urlencoded"
            )]))
            .is_err());
        assert!(p.check_state_change(&headers(&[])).is_err());
    }
}
