//! `lockledger status` and `lockledger list`: locks as a table (coloured on a terminal)
//! or as the API's per-lock JSON objects.

use super::{print_json, GlobalOpts, EXIT_OK};
use crate::export;
use crate::ids::display_field;
use crate::policy::stale::LockState;
use crate::registry::{LockReport, RegistryError};
use clap::Args;
use std::io::IsTerminal;

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub owner: String,
    /// Print the per-lock JSON objects of the API
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_parser = ["free", "held", "stale"])]
    pub state: Option<String>,
    #[arg(long)]
    pub owner_prefix: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

fn color_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(text: &str, state: LockState, color: bool) -> String {
    if !color {
        return text.to_string();
    }
    let code = match state {
        LockState::Free => "32",
        LockState::Held => "33",
        LockState::Stale => "31",
        LockState::Unsafe => "35",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The table of `locks`, with an OWNER column when they are of several owners.
fn lock_table(locks: &[LockReport], with_owner: bool) -> String {
    let color = color_enabled();
    let mut headers = vec![
        "FIELD",
        "STATE",
        "REASON",
        "KIND",
        "HOLDER",
        "OPERATION",
        "PID",
        "AGE",
        "TOKEN",
    ];
    if with_owner {
        headers.insert(0, "OWNER");
    }
    let rows: Vec<Vec<String>> = locks
        .iter()
        .map(|l| {
            let state = l.state.as_str().to_uppercase();
            // Pad before painting so escape codes do not skew the column widths.
            let state = paint(&format!("{state:<5}"), l.state, color);
            let mut row = vec![
                display_field(&l.field).to_string(),
                state,
                l.stale_reason
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
                l.kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
                l.holder
                    .clone()
                    .or_else(|| l.command.clone())
                    .unwrap_or_default(),
                l.operation.clone().unwrap_or_default(),
                l.pid.map(|p| p.to_string()).unwrap_or_default(),
                l.age_s.map(|a| format!("{a:.1}s")).unwrap_or_default(),
                l.token.map(|t| t.to_string()).unwrap_or_default(),
            ];
            if with_owner {
                row.insert(0, l.owner.clone());
            }
            row
        })
        .collect();
    export::table(&headers, &rows)
}

pub fn status(g: &GlobalOpts, a: StatusArgs) -> Result<i32, RegistryError> {
    let reg = g.open_for_reading()?;
    let status = reg.status(g.namespace(), &a.owner)?;
    if a.json {
        print_json(&status.locks)?;
    } else {
        println!("{} {}", status.namespace, status.owner);
        print!("{}", lock_table(&status.locks, false));
        for l in status.locks.iter().filter(|l| l.state != LockState::Free) {
            println!("  {}", l.note);
        }
    }
    Ok(EXIT_OK)
}

pub fn list(g: &GlobalOpts, a: ListArgs) -> Result<i32, RegistryError> {
    let reg = g.open_for_reading()?;
    let state = a.state.as_deref().and_then(LockState::parse);
    let (locks, _next) = reg.list(state, a.owner_prefix.as_deref(), 0, a.limit)?;
    if a.json {
        print_json(&locks)?;
    } else {
        print!("{}", lock_table(&locks, true));
    }
    Ok(EXIT_OK)
}
