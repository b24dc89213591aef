//! `lockledger serve`: the HTTP service on a tokio runtime.

use super::{GlobalOpts, EXIT_ERROR, EXIT_OK};
use crate::registry::{Registry, RegistryError};
use clap::builder::BoolishValueParser;
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, env = "LOCKLEDGER_BIND", default_value = "127.0.0.1:8787")]
    pub bind: std::net::SocketAddr,
    /// User token (required for a non-loopback bind)
    #[arg(long, env = "LOCKLEDGER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Admin token (default: generated into STORAGE/admin-token)
    #[arg(long, env = "LOCKLEDGER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Extra Host names this service answers to (repeatable), e.g. chat.internal:8787
    #[arg(long)]
    pub allow_host: Vec<String>,
    /// Browser origins accepted besides this service's own (repeatable), for a proxy that
    /// passes the chat app's page requests on, e.g. https://chat.example.com
    #[arg(long)]
    pub allow_origin: Vec<String>,
    /// Demo mode: streamed chat replies hold leases; simulated stuck holders
    #[arg(long)]
    pub demo: bool,
    /// Log every request (method, path, status, time) at info level. The environment
    /// variable takes 1/true/yes/on or 0/false/no/off.
    #[arg(long, env = "LOCKLEDGER_ACCESS_LOG", value_parser = BoolishValueParser::new())]
    pub access_log: bool,
    /// Most connections open at once (kept below the file-descriptor limit)
    #[arg(long, env = "LOCKLEDGER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// How long a request head may take to arrive (also the keep-alive idle timeout)
    #[arg(long, env = "LOCKLEDGER_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
}

pub fn serve(g: &GlobalOpts, a: ServeArgs) -> Result<i32, RegistryError> {
    let mut config = g.config()?;
    if a.demo {
        // A hung holder should turn stale while someone is watching.
        config.max_hold = Duration::from_secs(15);
    }
    let reg = Registry::open(config)?;
    let opts = crate::http::ServeOptions {
        bind: a.bind,
        user_token: a.token,
        admin_token: a.admin_token,
        allowed_hosts: a.allow_host,
        allowed_origins: a.allow_origin,
        demo: a.demo,
        access_log: a.access_log,
        max_connections: a.max_connections,
        header_timeout: Duration::from_millis(a.header_timeout_ms.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RegistryError::BadRequest(format!("cannot start the async runtime: {e}")))?;
    match runtime.block_on(crate::http::serve(reg, opts)) {
        Ok(()) => Ok(EXIT_OK),
        Err(e) => {
            eprintln!("lockledger: {e}");
            Ok(EXIT_ERROR)
        }
    }
}
