//! `lockledger sql`, `reconcile` and `prune`: admin work on the registry itself.

use super::{actor, print_json, GlobalOpts, EXIT_OK};
use crate::export;
use crate::registry::RegistryError;
use crate::store::console;
use clap::Args;

#[derive(Debug, Args)]
pub struct SqlArgs {
    pub sql: String,
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn sql(g: &GlobalOpts, a: SqlArgs) -> Result<i32, RegistryError> {
    // Make sure the database exists and is migrated; then query it read-only.
    let reg = g.open_for_reading()?;
    let limits = console::Limits {
        max_rows: a.max_rows.clamp(1, 100_000),
        ..console::Limits::default()
    };
    let result = reg
        .admin_sql(&a.sql, limits)
        .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
    if a.json {
        print_json(&result)?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "NULL".into(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let headers: Vec<&str> = result.columns.iter().map(String::as_str).collect();
    print!("{}", export::table(&headers, &rows));
    if result.truncated {
        println!("(truncated at {} rows)", result.rows.len());
    }
    Ok(EXIT_OK)
}

pub fn reconcile(g: &GlobalOpts, a: ReconcileArgs) -> Result<i32, RegistryError> {
    let reg = g.open()?;
    let report = reg.reconcile(&actor())?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} held record(s); reconciled {}{}",
            report.checked,
            report.reconciled.len(),
            if report.reconciled.is_empty() {
                String::new()
            } else {
                format!(": {}", report.reconciled.join(", "))
            }
        );
    }
    Ok(EXIT_OK)
}

pub fn prune(g: &GlobalOpts) -> Result<i32, RegistryError> {
    let n = g.open()?.prune_history()?;
    println!("pruned {n} history row(s)");
    Ok(EXIT_OK)
}
