//! `lockledger clear`: a safe clear of one owner, or a force clear of one grant.

use super::{actor, print_json, GlobalOpts, EXIT_NOT_CLEARED, EXIT_OK};
use crate::registry::{LockReport, Registry, RegistryError};
use clap::Args;
use std::collections::BTreeMap;

#[derive(Debug, Args)]
pub struct ClearArgs {
    pub owner: String,
    /// Also revoke a live holder (admin); needs --token and --reason
    #[arg(long)]
    pub force: bool,
    /// Field to force-clear (may be omitted when the token identifies one lock)
    #[arg(long)]
    pub field: Option<String>,
    /// The exact token shown by `status` (force clear)
    #[arg(long)]
    pub token: Option<i64>,
    /// Why (recorded in history; required with --force)
    #[arg(long)]
    pub reason: Option<String>,
    /// Safe clear only if FIELD still has TOKEN (repeatable), e.g. --expect messages=7
    #[arg(long, value_name = "FIELD=TOKEN")]
    pub expect: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn clear(g: &GlobalOpts, a: ClearArgs) -> Result<i32, RegistryError> {
    let reg = g.open()?;
    if a.force {
        return force_clear(&reg, g.namespace(), a);
    }
    if a.token.is_some() || a.field.is_some() || a.reason.is_some() {
        return Err(RegistryError::BadRequest(
            "--field, --token and --reason go with --force; a safe clear takes --expect FIELD=TOKEN"
                .into(),
        ));
    }
    let mut tokens = BTreeMap::new();
    for pair in &a.expect {
        let (f, t) = pair
            .split_once('=')
            .and_then(|(f, t)| t.parse::<i64>().ok().map(|t| (f, t)))
            .ok_or_else(|| {
                RegistryError::BadRequest(format!("--expect {pair:?} is not FIELD=TOKEN"))
            })?;
        tokens.insert(f.to_string(), t);
    }
    let tokens = (!tokens.is_empty()).then_some(tokens);
    let out = reg.clear_and_look(g.namespace(), &a.owner, tokens, &actor())?;
    if a.json {
        print_json(&out)?;
    } else {
        // The same words as the API's `outcomes` and the Lock Status modal.
        for o in &out.outcomes {
            let what = if o.outcome == "cleared" {
                "cleared"
            } else {
                "left"
            };
            println!("{what:<8} {}", o.note);
        }
        if out.outcomes.is_empty() {
            println!("nothing to clear: no lock of {} is held or stale", a.owner);
        }
    }
    Ok(if out.success {
        EXIT_OK
    } else {
        EXIT_NOT_CLEARED
    })
}

/// The field whose current token is `token`, when the caller did not name one.
fn field_with_token(
    reg: &Registry,
    ns: Option<&str>,
    owner: &str,
    token: i64,
) -> Result<String, RegistryError> {
    let status = reg.status(ns, owner)?;
    let matching: Vec<&LockReport> = status
        .locks
        .iter()
        .filter(|l| l.token == Some(token))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.field.clone()),
        [] => Err(RegistryError::NotClearable {
            lock: owner.to_string(),
            reason: format!(
                "no lock of {owner} has token {token} now (it changed since you looked); run `lockledger status {owner}`"
            ),
        }),
        _ => Err(RegistryError::BadRequest(format!(
            "several locks of {owner} have token {token}; name one with --field"
        ))),
    }
}

fn force_clear(reg: &Registry, ns: Option<&str>, a: ClearArgs) -> Result<i32, RegistryError> {
    let token = a.token.ok_or_else(|| {
        RegistryError::BadRequest(
            "--force needs --token (the token `lockledger status` shows)".into(),
        )
    })?;
    let reason = a
        .reason
        .ok_or_else(|| RegistryError::BadRequest("--force needs --reason".into()))?;
    let field = match a.field {
        Some(f) => f,
        None => field_with_token(reg, ns, &a.owner, token)?,
    };
    let key = reg.key(ns, &a.owner, &field)?;
    let done = reg.force_clear(&key, token, &reason, &actor())?;
    if a.json {
        print_json(&done)?;
    } else {
        println!("{}", done.note);
    }
    Ok(EXIT_OK)
}
