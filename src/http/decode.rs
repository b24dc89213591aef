//! Decoding requests: the body (bounded), path segments, query strings and JSON bodies.
//!
//! Invariants:
//! - Bodies are capped at [`MAX_BODY_BYTES`] (declared or streamed); paths at 2048 bytes.
//! - Percent-encoding is strict: a `%` not followed by two hex digits, or bytes that are
//!   not UTF-8 after decoding, are refused (400), never passed on half-decoded.
//! - Query strings decode into a typed struct per route with `deny_unknown_fields`, so an
//!   unknown or repeated key is refused; an empty value means "not given".
//! - Decoding never panics, whatever the bytes (the `http_decode` fuzz target).

use super::error::ApiError;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use warp::http::{HeaderMap, Method, StatusCode};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest request path accepted.
pub const MAX_PATH_BYTES: usize = 2048;

/// Longest wait an acquire may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;

/// One decoded request, independent of warp, so handlers are plain functions.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Reads the body, refusing more than `limit` bytes (413) before buffering them.
pub async fn read_body<S, B>(
    stream: S,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(body))
}

/// Is every `%` in `s` followed by two hex digits?
fn well_formed_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// Percent-decodes one component strictly; `plus_is_space` for query strings.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, ApiError> {
    if !well_formed_escapes(s) {
        return Err(ApiError::bad_request(
            "malformed percent-encoding in the URL",
        ));
    }
    let spaced;
    let s = if plus_is_space && s.contains('+') {
        spaced = s.replace('+', " ");
        spaced.as_str()
    } else {
        s
    };
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::bad_request("the URL is not valid UTF-8"))
}

/// The decoded, non-empty segments of a path.
pub fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the path is too long",
        ));
    }
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect()
}

/// Decodes a query string into `T` (a struct with `deny_unknown_fields`).
pub fn query<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    if !well_formed_escapes(raw) {
        return Err(ApiError::bad_request(
            "malformed percent-encoding in the URL",
        ));
    }
    serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

/// A route that takes no query parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// `?namespace=` (default: the first configured, `conversation`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NamespaceQuery {
    /// Lock namespace, e.g. `conversation` or `document`.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub namespace: Option<String>,
}

/// Query values are strings; an empty one means "not given", anything else must parse.
pub fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
{
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<T>().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{:?} is not a valid value here",
            s.chars().take(40).collect::<String>()
        ))
    })
}

fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!("the body is not the JSON this route takes: {e}"),
    )
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Decodes a JSON body; an empty body means "no options" where `T: Default` (the chat
/// app's front end posts `Content-Type: application/json` with no body).
pub fn optional_body<T: DeserializeOwned + Default>(req: &Request) -> Result<T, ApiError> {
    if is_blank(&req.body) {
        return Ok(T::default());
    }
    serde_json::from_slice(&req.body).map_err(malformed)
}

/// A body that must be present.
pub fn required_json<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    if is_blank(&req.body) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "this route needs a JSON body",
        ));
    }
    serde_json::from_slice(&req.body).map_err(malformed)
}

/// Decodes a request target the way the router does (path segments, route, query
/// parameters and a JSON body of any of the route bodies), for fuzzing: it must never
/// panic, whatever the bytes.
pub fn fuzz_decode(path: &str, query_string: &str, body: &[u8]) {
    if let Ok(segs) = split_path(path) {
        let _ = super::routes::find(&Method::GET, &segs);
        let _ = super::routes::find(&Method::POST, &segs);
    }
    let _ = query::<super::handlers::history::HistoryParams>(query_string);
    let _ = query::<super::handlers::locks::ListQuery>(query_string);
    let _ = query::<NamespaceQuery>(query_string);
    super::handlers::fuzz_bodies(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_strictly() {
        assert!(split_path("/a/%zz").is_err());
        assert!(split_path("/a/%ff%fe").is_err());
        assert_eq!(
            split_path("/get_lock_status/%2e%2e%2fetc").unwrap()[1],
            "../etc"
        );
        assert_eq!(percent_decode("a+b%2B", true).unwrap(), "a b+");
        assert_eq!(percent_decode("a+b%2B", false).unwrap(), "a+b+");
    }

    #[test]
    fn queries_refuse_unknown_and_repeated_keys() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Q {
            #[serde(default, deserialize_with = "empty_as_none")]
            state: Option<String>,
            #[serde(default, deserialize_with = "empty_as_none")]
            limit: Option<usize>,
        }
        let q: Q = query("state=held&limit=5").unwrap();
        assert_eq!((q.state.as_deref(), q.limit), (Some("held"), Some(5)));
        assert!(query::<Q>("stat=held").is_err());
        assert!(query::<Q>("state=a&state=b").is_err());
        assert!(query::<Q>("limit=abc").is_err());
        assert!(query::<Q>("state=%").is_err());
        let empty: Q = query("state=&limit=").unwrap();
        assert_eq!((empty.state, empty.limit), (None, None));
        let plus: NamespaceQuery = query("namespace=a%2Bb+c").unwrap();
        assert_eq!(plus.namespace.as_deref(), Some("a+b c"));
    }
}
