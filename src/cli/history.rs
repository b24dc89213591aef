//! `lockledger history`: the audit trail, newest first, as a table, JSON or CSV.

use super::{print_json, GlobalOpts, EXIT_OK};
use crate::clock;
use crate::export;
use crate::ids::{LockKey, MAIN_FIELD_ALIAS};
use crate::registry::RegistryError;
use crate::store::history::{EventKind, EventRow, HistoryQuery};
use clap::Args;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub field: Option<String>,
    #[arg(long)]
    pub event: Option<String>,
    #[arg(long)]
    pub holder: Option<String>,
    /// RFC 3339 time or epoch milliseconds
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only events older than this event id (paging)
    #[arg(long)]
    pub cursor: Option<i64>,
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    #[arg(long)]
    pub csv: bool,
}

fn time_arg(value: &Option<String>, what: &str) -> Result<Option<i64>, RegistryError> {
    value
        .as_deref()
        .map(|v| {
            clock::parse_time(v).ok_or_else(|| {
                RegistryError::BadRequest(format!(
                    "--{what} {v:?} is not an RFC 3339 time or epoch ms"
                ))
            })
        })
        .transpose()
}

fn table(rows: &[EventRow]) -> String {
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.event_id.to_string(),
                clock::rfc3339(r.at),
                crate::ids::lock_name(&r.owner, &r.field),
                r.event.clone(),
                r.token.map(|t| t.to_string()).unwrap_or_default(),
                r.pid.map(|t| t.to_string()).unwrap_or_default(),
                r.holder.clone().unwrap_or_default(),
                r.operation.clone().unwrap_or_default(),
                r.actor.clone().unwrap_or_default(),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    export::table(
        &[
            "ID",
            "AT",
            "LOCK",
            "EVENT",
            "TOKEN",
            "PID",
            "HOLDER",
            "OPERATION",
            "ACTOR",
            "REASON",
        ],
        &table_rows,
    )
}

pub fn history(g: &GlobalOpts, a: HistoryArgs) -> Result<i32, RegistryError> {
    let reg = g.open_for_reading()?;
    let ns = g.namespace();
    let event = a
        .event
        .as_deref()
        .map(|e| {
            EventKind::parse(e)
                .ok_or_else(|| RegistryError::BadRequest(format!("unknown event {e:?}")))
        })
        .transpose()?;
    let field = match (&a.owner, a.field) {
        (_, None) => None,
        (Some(o), Some(f)) => Some(
            LockKey::in_config(reg.config(), ns, o, &f)?
                .field()
                .to_string(),
        ),
        (None, Some(f)) => Some(if f == MAIN_FIELD_ALIAS {
            String::new()
        } else {
            f
        }),
    };
    let q = HistoryQuery {
        namespace: ns.map(str::to_string),
        owner: a.owner,
        field,
        event,
        holder: a.holder,
        since_ms: time_arg(&a.since, "since")?,
        until_ms: time_arg(&a.until, "until")?,
        before_event_id: a.cursor,
        limit: a.limit,
    };
    let rows = reg.history(&q)?;
    if a.json {
        print_json(&rows)?;
    } else if a.csv {
        print!("{}", export::history_csv(&rows));
    } else {
        print!("{}", table(&rows));
    }
    Ok(EXIT_OK)
}
