//! Demo mode (`serve --demo`): a chat whose streamed replies hold the conversation's locks
//! as leases, and buttons that make a crashed, a hung or an external holder.
//!
//! Invariants:
//! - A streamed reply's leases live exactly as long as its response stream: a finished
//!   stream, a Stop (the client aborts) or a closed tab drops the stream, and the drop
//!   releases the leases at once. While streaming, the leases are renewed.
//! - Simulated holders are real processes (this binary's `hold`), so what the Lock Status
//!   modal shows is what the kernel and the registry say, not a mock.

use super::decode::{optional_body, query, required_json, NoQuery, MAX_WAIT_MS};
use super::error::{json_response, registry_error, ApiError, Response};
use super::handlers::Ctx;
use super::offload::off_thread;
use super::App;
use crate::registry::{LeaseRequest, Registry};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::Reply;

/// Fields a streamed reply holds, as the chat app's send path does.
const STREAM_FIELDS: [&str; 2] = ["messages", "message_operations"];
const CHUNK_EVERY: Duration = Duration::from_millis(25);
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Simulated holders this service started: (conversation, kind, process).
#[derive(Debug, Default)]
pub struct DemoState {
    holders: Mutex<Vec<(String, String, Child)>>,
}

impl Drop for DemoState {
    fn drop(&mut self) {
        let holders = self
            .holders
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (_, _, mut child) in holders {
            end_child(&mut child);
        }
    }
}

fn end_child(child: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGCONT);
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Releases the reply's leases when the response stream is dropped, however it ends.
struct Leases {
    registry: Registry,
    ids: Vec<String>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        let reg = self.registry.clone();
        let ids = std::mem::take(&mut self.ids);
        let release = move || {
            for id in ids {
                if let Err(e) = reg.release_lease(&id) {
                    log::debug!("demo: lease {id} was already gone: {e}");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    pub message: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DemoStatus {
    pub demo: bool,
}

/// The demo routes answer 404 when the service runs without `--demo`.
fn demo_on(cx: &Ctx<'_>) -> Result<(), ApiError> {
    if cx.app.demo.is_some() {
        Ok(())
    } else {
        Err(ApiError::not_found("demo mode is off (serve --demo)"))
    }
}

pub fn status(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    demo_on(cx)?;
    query::<NoQuery>(&cx.req.query)?;
    Ok(json_response(StatusCode::OK, &DemoStatus { demo: true }))
}

/// The words of a canned reply, streamed one by one.
fn reply_words(message: &str) -> Vec<String> {
    let echo: String = message.chars().take(200).collect();
    let text = format!(
        "You said: \"{echo}\". While this reply streams, the conversation's messages and \
         message_operations locks are held as leases by lockledger. Press Stop or close the \
         tab and they are released at once; open Settings → Lock Status to watch them."
    );
    let mut words: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
    // Long enough to look at the held locks, short enough for a demo.
    let filler = "streaming ".repeat(160);
    words.extend(
        filler
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(|w| format!("{w} ")),
    );
    words
}

pub async fn chat(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    demo_on(cx)?;
    query::<NoQuery>(&cx.req.query)?;
    let (app, owner) = (cx.app, cx.arg(0));
    let body: ChatBody = optional_body(cx.req)?;
    let message = body.message.unwrap_or_default();
    let keys = STREAM_FIELDS
        .iter()
        .map(|f| app.registry.key(None, owner, f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(registry_error)?;
    let reg = app.registry.clone();
    let ids = off_thread(move || -> Result<Vec<String>, crate::RegistryError> {
        let mut leases = Leases {
            registry: reg.clone(),
            ids: Vec::new(),
        };
        for key in &keys {
            let grant = reg.acquire_lease(
                key,
                &LeaseRequest {
                    holder: "demo-chat".into(),
                    operation: "stream_reply".into(),
                    pid: None,
                    host: None,
                    ttl: Some(LEASE_TTL),
                    wait: Duration::from_millis(MAX_WAIT_MS.min(5000)),
                },
                &|| false,
            )?;
            leases.ids.push(grant.lease_id);
        }
        // Hand the ids over without releasing them.
        Ok(std::mem::take(&mut leases.ids))
    })
    .await?
    .map_err(registry_error)?;
    let leases = Leases {
        registry: app.registry.clone(),
        ids,
    };
    let words = reply_words(&message);
    let stream =
        futures_util::stream::unfold((0usize, words, leases), |(i, words, leases)| async move {
            if i >= words.len() {
                return None; // dropping `leases` releases the locks
            }
            tokio::time::sleep(CHUNK_EVERY).await;
            if i > 0 && i % 80 == 0 {
                let reg = leases.registry.clone();
                let ids = leases.ids.clone();
                let _ = off_thread(move || {
                    for id in ids {
                        let _ = reg.renew_lease(&id);
                    }
                })
                .await;
            }
            let chunk = Bytes::from(words[i].clone());
            Some((
                Ok::<Bytes, std::convert::Infallible>(chunk),
                (i + 1, words, leases),
            ))
        });
    let mut resp = warp::reply::stream(stream).into_response();
    resp.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateBody {
    pub conversation_id: String,
    /// crashed, hung, external, or end (ends this conversation's simulated holders).
    pub kind: String,
}

/// What a simulation did: the holder it started, or how many it ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct Simulated {
    pub kind: String,
    pub conversation_id: String,
    /// The simulated holder's process, while it runs.
    pub pid: Option<u32>,
    /// `end`: how many simulated holders were ended.
    pub ended: Option<usize>,
}

/// Starts `lockledger hold` on this storage; returns the child once it holds the lock.
fn spawn_holder(app: &App, owner: &str, field: &str, extra: &[&str]) -> Result<Child, ApiError> {
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m);
    let exe =
        std::env::current_exe().map_err(|e| internal(format!("cannot find this program: {e}")))?;
    let mut child = Command::new(exe)
        .arg("--storage")
        .arg(&app.registry.config().storage_dir)
        .args(["hold", owner, field, "--wait-ms", "2000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| internal(format!("cannot start a holder: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    if !line.contains("held") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            format!("lock {owner}/{field} is busy; end the other holder first"),
        ));
    }
    Ok(child)
}

pub async fn simulate(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    demo_on(cx)?;
    query::<NoQuery>(&cx.req.query)?;
    let app = cx.app;
    let body: SimulateBody = required_json(cx.req)?;
    crate::ids::check_owner(&body.conversation_id).map_err(|e| registry_error(e.into()))?;
    let Some(demo) = app.demo.as_ref() else {
        return Err(ApiError::not_found("demo mode is off (serve --demo)"));
    };
    let app2 = Arc::clone(app);
    let owner = body.conversation_id.clone();
    let kind = body.kind.clone();
    let started: Result<Option<(String, String, Child)>, ApiError> = off_thread(move || {
        match kind.as_str() {
            "crashed" => {
                let mut child =
                    spawn_holder(&app2, &owner, "memory", &["--operation", "save_memory"])?;
                let _ = child.kill(); // SIGKILL: the record stays, the holder is gone
                let _ = child.wait();
                Ok(None)
            }
            "hung" => {
                let child = spawn_holder(
                    &app2,
                    &owner,
                    "all",
                    &["--operation", "summarise", "--renew-ms", "0"],
                )?;
                // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGSTOP);
                }
                Ok(Some((owner, kind, child)))
            }
            "external" => {
                let child =
                    spawn_holder(&app2, &owner, "uploaded_documents_list", &["--external"])?;
                Ok(Some((owner, kind, child)))
            }
            "end" => Ok(None),
            other => Err(ApiError::bad_request(format!(
                "kind must be crashed, hung, external or end, not {:?}",
                other.chars().take(20).collect::<String>()
            ))),
        }
    })
    .await?;
    let started = started?;
    let mut holders = demo.holders.lock().unwrap_or_else(|p| p.into_inner());
    if body.kind == "end" {
        let mut ended = 0;
        let mut keep = Vec::new();
        for (owner, kind, mut child) in holders.drain(..) {
            if owner == body.conversation_id {
                end_child(&mut child);
                ended += 1;
            } else {
                keep.push((owner, kind, child));
            }
        }
        *holders = keep;
        return Ok(json_response(
            StatusCode::OK,
            &Simulated {
                kind: body.kind,
                conversation_id: body.conversation_id,
                pid: None,
                ended: Some(ended),
            },
        ));
    }
    let pid = started.as_ref().map(|(_, _, c)| c.id());
    if let Some(entry) = started {
        holders.push(entry);
    }
    Ok(json_response(
        StatusCode::OK,
        &Simulated {
            kind: body.kind,
            conversation_id: body.conversation_id,
            pid,
            ended: None,
        },
    ))
}
