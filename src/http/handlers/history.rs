//! `GET /api/v1/history`: the audit trail, newest first, as JSON pages or CSV.

use super::Ctx;
use crate::clock;
use crate::http::decode::{empty_as_none, query};
use crate::http::error::{json_response, registry_error, ApiError, Response};
use crate::http::offload::blocking;
use crate::ids::{self, IdError};
use crate::registry::RegistryError;
use crate::store::history::{EventKind, EventRow, HistoryQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::http::{HeaderValue, StatusCode};
use warp::Reply;

/// History filters; every one optional, an empty value means "any".
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    #[serde(default, deserialize_with = "empty_as_none")]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub owner: Option<String>,
    /// A configured field; `main` for the main lock.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub field: Option<String>,
    /// acquired, released, renewed, expired, cleared, force_cleared, reconciled,
    /// wait_timeout, observed_external or file_replaced.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub event: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub holder: Option<String>,
    /// RFC 3339 or epoch milliseconds (inclusive).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub since: Option<String>,
    /// RFC 3339 or epoch milliseconds (exclusive).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub until: Option<String>,
    /// 1..1000 (JSON) or 1..100000 (CSV); default 50.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub cursor: Option<i64>,
    /// `json` (default) or `csv`.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub events: Vec<EventRow>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<i64>,
}

pub async fn history(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    let q: HistoryParams = query(&cx.req.query)?;
    let config = cx.app.registry.config();
    let id_error = |e: IdError| registry_error(RegistryError::InvalidId(e));
    let ns = ids::namespace_of(config, q.namespace.as_deref())
        .map_err(id_error)?
        .clone();
    if let Some(owner) = &q.owner {
        ids::check_owner(owner).map_err(id_error)?;
    }
    let field = match q.field.as_deref() {
        None => None,
        Some(f) => {
            let f = if f == ids::MAIN_FIELD_ALIAS { "" } else { f };
            if !ns.fields.iter().any(|x| x == f) {
                return Err(id_error(IdError::UnknownField {
                    namespace: ns.name.clone(),
                    field: f.chars().take(64).collect(),
                    known: ns.fields.join(", "),
                }));
            }
            Some(f.to_string())
        }
    };
    let event = q
        .event
        .as_deref()
        .map(|e| {
            EventKind::parse(e).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown event {:?}",
                    e.chars().take(40).collect::<String>()
                ))
            })
        })
        .transpose()?;
    let time = |k: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|v| {
                clock::parse_time(v).ok_or_else(|| {
                    ApiError::bad_request(format!("{k} must be RFC 3339 or epoch milliseconds"))
                })
            })
            .transpose()
    };
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("format must be json or csv")),
    };
    // A CSV export is every matching row unless a limit is given; a JSON page at most 1000.
    let limit = match (q.limit, csv) {
        (Some(0), _) => return Err(ApiError::bad_request("limit must be at least 1")),
        (Some(n), false) if n > 1000 => {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"))
        }
        (Some(n), _) => n,
        (None, false) => 50,
        (None, true) => usize::MAX,
    };
    if q.holder.as_ref().is_some_and(|h| h.len() > 200) {
        return Err(ApiError::bad_request("holder is too long"));
    }
    let hq = HistoryQuery {
        namespace: q.namespace.as_ref().map(|_| ns.name.clone()),
        owner: q.owner,
        field,
        event,
        holder: q.holder,
        since_ms: time("since", &q.since)?,
        until_ms: time("until", &q.until)?,
        before_event_id: q.cursor,
        limit,
    };
    if csv {
        return Ok(csv_export(cx, hq));
    }
    let reg = cx.app.registry.clone();
    let rows = blocking(move || reg.history(&hq)).await?;
    let next_cursor = if rows.len() == limit {
        rows.last().map(|r| r.event_id)
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &HistoryPage {
            events: rows,
            next_cursor,
        },
    ))
}

/// Rows per page of a CSV export: each page is its own short read.
const EXPORT_PAGE: usize = 5_000;

/// Where a streamed export stands.
struct Export {
    registry: crate::registry::Registry,
    query: HistoryQuery,
    /// Rows still to send (the limit asked for, or all).
    left: usize,
    sent: u64,
    done: bool,
}

/// Streams every matching row as CSV, newest first, a page at a time (no cap, no long
/// read transaction), ending with a line `# rows: N` that says how many were sent (or
/// `# export stopped: ...` if a page could not be read).
fn csv_export(cx: &Ctx<'_>, query: HistoryQuery) -> Response {
    let start = Export {
        registry: cx.app.registry.clone(),
        left: query.limit,
        query,
        sent: 0,
        done: false,
    };
    let header = futures_util::stream::once(async {
        Ok::<bytes::Bytes, std::convert::Infallible>(bytes::Bytes::from(format!(
            "{}\n",
            crate::export::HISTORY_CSV_HEADER
        )))
    });
    let pages = futures_util::stream::unfold(start, |mut ex| async move {
        if ex.done {
            return None;
        }
        if ex.left == 0 {
            ex.done = true;
            let trailer = format!("# rows: {}\n", ex.sent);
            return Some((Ok(bytes::Bytes::from(trailer)), ex));
        }
        let mut page = ex.query.clone();
        page.limit = ex.left.min(EXPORT_PAGE);
        let reg = ex.registry.clone();
        let read = tokio::task::spawn_blocking(move || reg.history(&page)).await;
        let chunk = match read {
            Ok(Ok(rows)) => {
                ex.left = if rows.len() < ex.left.min(EXPORT_PAGE) {
                    0
                } else {
                    ex.left - rows.len()
                };
                ex.sent += rows.len() as u64;
                ex.query.before_event_id = rows.last().map(|r| r.event_id);
                if rows.is_empty() {
                    ex.left = 0;
                }
                crate::export::history_csv_rows(&rows)
            }
            Ok(Err(e)) => {
                ex.done = true;
                format!("# export stopped after {} rows: {e}\n", ex.sent)
            }
            Err(_) => {
                ex.done = true;
                format!("# export stopped after {} rows: a worker failed\n", ex.sent)
            }
        };
        Some((Ok(bytes::Bytes::from(chunk)), ex))
    });
    let mut resp =
        warp::reply::stream(futures_util::StreamExt::chain(header, pages)).into_response();
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        "content-disposition",
        HeaderValue::from_static("attachment; filename=\"lock-history.csv\""),
    );
    resp
}
