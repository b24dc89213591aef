// Browser tests of the lockledger web UI: real Chromium, real lockledger processes.
//
//   cargo build                                   # the runner builds nothing itself
//   cd tests/browser && npm ci && node run.mjs    # or: npm test
//
// Environment:
//   LOCKLEDGER_BIN      the lockledger binary (default: ../../target/debug/lockledger relative
//                       to this file)
//   CHROMIUM            the browser (default /usr/bin/chromium; Debian: apt-get install chromium)
//   LL_SCREENSHOT_DIR   where the screenshots go (default os.tmpdir()): the open Lock Status modal
//                       (lockledger-lock-status-modal.png) and the history timeline in light and
//                       dark mode (timeline-light.png, timeline-dark.png)
//
// Each run starts `lockledger serve --bind 127.0.0.1:0` on a temporary storage directory (and a
// second one with `--demo` for the demo tests; those are skipped, saying so, when the binary has
// no demo mode, i.e. GET /demo/status is 404). Locks are held by real child processes
// (`lockledger hold`), killed with real signals, or by leases taken over the HTTP API. Uses only
// node's built-in test runner and playwright-core driving the system Chromium; about 60 s.
// One test holds a lock file with Python's filelock (as the chat app does); it is skipped,
// saying so, when `python3 -c "import filelock"` fails.
//
// Services run with LOCKLEDGER_RECONCILE_PERIOD_MS=0 so that a holder_dead lock stays STALE until
// the test clears it (the default service repairs dead holders' records every 5 s by itself).
//
// What is checked: the Lock Status button (id, title, text, icon, warning style, place in the
// Settings quick actions) opens <dialog id="lock-status-modal">; a held lock shows HELD with the
// holder's pid, SIGKILLed it shows STALE (holder_dead) and "Clear stuck locks", which asks first,
// then shows the cleared file and a fresh CLEAR; live holders are reported as skipped and stay
// HELD; the tokens shown are sent (a lock that changed since is skipped); force clear needs the
// admin token (a wrong one is refused, the right one kept in sessionStorage only) and a typed
// confirmation plus a reason, then the lock is CLEAR (a lease at once, a library holder once it
// lets go); a holder label with markup is text everywhere (modal, clear result, history, SQL); the
// history page reads its filters from the URL, pages with Older/Newer, filters by event, field,
// holder and time, exports CSV; the SQL tab runs a query with the admin token, refuses DELETE and
// shows the error and truncation; dark mode; keyboard use (Tab, Enter, Escape, focus return); the
// chat page without --demo. The history timeline: one bar per hold on its lock's lane, with its
// ending (released, expired, force_cleared, cleared, reconciled, still held) as class, data
// attribute and colour, the busy answer as a mark, the tooltip on keyboard focus and on hover,
// Enter or a click filtering the table to the hold (URL updated, its rows highlighted), the same
// holds as a table, lanes per owner capped at 12 on the global view. At 360x740: no sideways
// scroll on the chat page, with Settings or Lock Status open, on the history page (its table a
// stack of cards), and tap targets of 44 px. WCAG AA contrast in dark (and light) mode, from
// computed colours: named controls, badges, links and muted text >= 4.5:1, control edges >= 3:1,
// and every visible text swept. In demo mode: a streamed reply holds messages and
// message_operations, Stop or closing the tab releases them, simulated holders show correctly.
// What a clear really did, per lock, from real situations: cleared (a SIGKILLed holder), left
// alone (a live `hold`: who, doing what, how long, what frees it), changed since you looked (a
// lease released, or a reconcile, after the modal showed it), with success styling only when
// nothing is held or stale afterwards; a force clear of a `hold` that keeps its file lock says
// "revoked, process N still holds the file lock" (no success styling, Check again, the lock's
// history; the timeline says it too) while a lease is free at once; a lock file of a key that
// is not configured, held by a Python filelock process, is HELD with "not configured"; a
// deleted-and-replaced lock file and a second holder on the new file are warnings; with
// --token the history page asks for the token, then CSV export fetches with it and saves every
// row ("# rows: N"); folded busy answers show "wait_timeout ×5" in the table and timeline. A
// symlink and a FIFO among an owner's lock files are UNSAFE on their own locks (the other locks
// as usual), and Clear skips them without following or opening them; the force-clear reason box
// takes at most 200 bytes, as the service does, and says so when a reason is too long.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.LOCKLEDGER_BIN
  ? path.resolve(process.env.LOCKLEDGER_BIN)
  : path.resolve(HERE, "../../target/debug/lockledger");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOT_DIR = process.env.LL_SCREENSHOT_DIR || os.tmpdir();
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

const MODAL = "#lock-status-modal";
// The service reconciles records of dead holders every 5 s (from its start): a test that needs
// a holder_dead lock to stay STALE starts its own service and finishes within this window.
const RECONCILE_WINDOW_MS = 4500;
const OPEN_BUTTON = "#settings-lock-status-modal-open-button";
const XSS = "<img src=x onerror=alert(1)>";

for (const [what, p] of [["LOCKLEDGER_BIN", BIN], ["Chromium", CHROMIUM]]) {
  if (!fs.existsSync(p)) {
    console.error(`browser tests: ${what} not found at ${p}`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------- processes

const children = new Set();

function track(child) {
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

process.on("exit", () => {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
});

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

/** Resolves with the first stdout line matching re. */
function lineMatching(child, re, what, timeoutMs = 15000) {
  return new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`${what}: no output matching ${re} after ${timeoutMs} ms: ${buf}`)), timeoutMs);
    const onData = (d) => {
      buf += d;
      const m = buf.match(re);
      if (m) {
        clearTimeout(timer);
        child.stdout.off("data", onData);
        resolve(m);
      }
    };
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before printing ${re}: ${buf}`));
    });
  });
}

async function startService({ demo = false, token = null } = {}) {
  const startedAt = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockledger-ui-"));
  const args = ["--storage", dir, "serve", "--bind", "127.0.0.1:0"];
  if (demo) args.push("--demo");
  if (token) args.push("--token", token);
  const proc = track(spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn", LOCKLEDGER_RECONCILE_PERIOD_MS: "0" } }));
  let stderr = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (d) => (stderr += d));
  let url;
  try {
    [url] = await lineMatching(proc, /http:\/\/127\.0\.0\.1:\d+/, "lockledger serve");
  } catch (e) {
    throw new Error(`${e.message}\nstderr: ${stderr}`);
  }
  const adminToken = fs.readFileSync(path.join(dir, "admin-token"), "utf8").trim();
  return {
    url,
    dir,
    adminToken,
    /** The user token (--token), when the service needs one; api() sends it. */
    userToken: token,
    startedAt,
    /** The services here run with LOCKLEDGER_RECONCILE_PERIOD_MS=0, so a holder_dead
     * lock stays STALE until it is cleared (no race with periodic reconciliation); this
     * only records how long the step took. */
    assertBeforeReconcile(what) {
      const ms = Date.now() - startedAt;
      if (ms > RECONCILE_WINDOW_MS) console.log(`# ${what} came ${ms} ms after the service started`);
    },
    async stop() {
      proc.kill("SIGTERM");
      await exited(proc);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `lockledger hold OWNER FIELD` as a child process; resolves once it holds the lock. */
async function hold(svc, owner, field, extra = []) {
  const child = track(
    spawn(BIN, ["--storage", svc.dir, "hold", owner, field, ...extra], { stdio: ["ignore", "pipe", "inherit"] })
  );
  const [line] = await lineMatching(child, /\{[^\n]*"event":"held"[^\n]*\}/, `hold ${owner} ${field}`);
  const held = JSON.parse(line);
  assert.equal(held.pid, child.pid);
  return { child, pid: child.pid, token: held.token };
}

const HAVE_FILELOCK = spawnSync("python3", ["-c", "import filelock"], { stdio: "ignore" }).status === 0;

/**
 * A process outside lockledger holding `file` with Python's filelock (as the chat app does),
 * for 60 s or until killed; resolves once it holds it. Note the FileLock object is kept in a
 * variable: a bare `FileLock(p).acquire()` is released as soon as it is garbage-collected.
 */
async function fileLockHolder(file) {
  const code = "import filelock,sys,time\nl = filelock.FileLock(sys.argv[1])\nl.acquire()\nprint('held', flush=True)\ntime.sleep(60)";
  const child = track(spawn("python3", ["-c", code, file], { stdio: ["ignore", "pipe", "inherit"] }));
  await lineMatching(child, /^held$/m, `filelock holder of ${path.basename(file)}`, 10000);
  return { child, pid: child.pid };
}

async function stopChild(h) {
  if (!h || h.child.exitCode !== null || h.child.signalCode !== null) return;
  h.child.kill("SIGTERM");
  await exited(h.child);
}

/** Waits until the Lock Status modal is not busy. */
async function modalIdle(page) {
  await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL, { timeout: 10000 });
}

/** The outcomes listed in the modal's result: field, outcome, word, state now, note. */
function outcomesIn(page) {
  return page.$$eval(`${MODAL} .ll-result .ll-outcome`, (lis) =>
    lis.map((li) => ({
      field: li.dataset.field,
      outcome: li.dataset.outcome,
      word: li.querySelector(".ll-outcome-word").textContent,
      now: li.querySelector(".ll-now .ll-badge")?.textContent ?? null,
      tag: li.querySelector(".ll-tag")?.textContent ?? null,
      note: li.querySelector(".ll-outcome-note")?.textContent ?? "",
    }))
  );
}

/** Runs fn with a service of its own (for steps that race the 5 s reconcile). */
async function withService(opts, fn) {
  const svc = await startService(opts);
  try {
    return await fn(svc);
  } finally {
    await svc.stop();
  }
}

async function kill9(h) {
  h.child.kill("SIGKILL");
  await exited(h.child);
}

async function api(svc, method, p, { body, admin = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (admin) headers.Authorization = `Bearer ${svc.adminToken}`;
  else if (svc.userToken) headers["X-Lockledger-Token"] = svc.userToken;
  const resp = await fetch(svc.url + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = text;
  }
  return { status: resp.status, data };
}

async function lockOf(svc, owner, field) {
  const { status, data } = await api(svc, "GET", `/get_lock_status/${encodeURIComponent(owner)}`);
  assert.equal(status, 200, JSON.stringify(data));
  return data.locks.find((l) => l.field === field);
}

async function eventually(fn, what, timeoutMs = 5000, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * One hold of each ending on `conv`, each on its own lock, made through the API and real
 * processes: released, expired (ttl_ms 300), force_cleared (admin), cleared (a `lockledger
 * hold` killed with SIGKILL, then a safe clear), reconciled (another one killed, then
 * POST /api/v1/reconcile) and held (a lease still held), plus a busy answer (wait_ms 0 on
 * the held lock), which records a wait_timeout. Returns the tokens by ending.
 */
async function makeHolds(svc, conv) {
  const acquire = async (field, body) => {
    const r = await api(svc, "POST", `/api/v1/locks/${conv}/${field}/acquire`, { body });
    assert.equal(r.status, 200, JSON.stringify(r.data));
    return r.data;
  };
  const tokens = {};
  const rel = await acquire("messages", { holder: "rel-holder", operation: "op-release" });
  await new Promise((r) => setTimeout(r, 150));
  assert.equal((await api(svc, "DELETE", `/api/v1/leases/${rel.lease_id}`, { body: {} })).status, 200);
  tokens.released = rel.token;

  tokens.expired = (await acquire("memory", { holder: "exp-holder", operation: "op-expire", ttl_ms: 300 })).token;
  await eventually(
    async () => (await api(svc, "GET", `/api/v1/history?owner=${conv}&event=expired`)).data.events.length === 1,
    "the short lease to expire",
    5000,
    100
  );

  const forced = await acquire("all", { holder: "force-holder", operation: "op-force", ttl_ms: 600000 });
  const fc = await api(svc, "POST", `/api/v1/locks/${conv}/force-clear`, {
    body: { field: "all", token: forced.token, reason: "timeline test" },
    admin: true,
  });
  assert.equal(fc.status, 200, JSON.stringify(fc.data));
  tokens.force_cleared = forced.token;

  const dead = await hold(svc, conv, "uploaded_documents_list", ["--operation", "op-crash", "--holder", "crash-holder"]);
  await kill9(dead);
  const cl = await api(svc, "POST", `/api/v1/locks/${conv}/clear`, { body: {} });
  assert.equal(cl.status, 200, JSON.stringify(cl.data));
  assert.equal(cl.data.cleared.length, 1, JSON.stringify(cl.data));
  tokens.cleared = dead.token;

  const gone = await hold(svc, conv, "main", ["--operation", "op-gone", "--holder", "gone-holder"]);
  await kill9(gone);
  const rc = await api(svc, "POST", "/api/v1/reconcile", { body: {}, admin: true });
  assert.equal(rc.status, 200, JSON.stringify(rc.data));
  tokens.reconciled = gone.token;

  tokens.held = (await acquire("message_operations", { holder: "live-holder", operation: "op-live", ttl_ms: 600000 })).token;
  const busy = await api(svc, "POST", `/api/v1/locks/${conv}/message_operations/acquire`, {
    body: { holder: "busy-asker", operation: "op-busy", wait_ms: 0 },
  });
  assert.equal(busy.status, 409, JSON.stringify(busy.data));
  // Busy answers are counted in memory and written with the next write or by the upkeep
  // (every reaper period, 250 ms): one wait_timeout row.
  const ev = await eventually(async () => {
    const events = (await api(svc, "GET", `/api/v1/history?owner=${conv}&limit=100`)).data.events;
    return events.some((e) => e.event === "wait_timeout") && events;
  }, "the busy answer to be recorded", 5000, 100);
  assert.equal(ev.filter((e) => e.event === "wait_timeout").length, 1, "the busy answer is recorded");
  for (const e of ["reconciled", "cleared", "force_cleared", "released"]) {
    assert.equal(ev.filter((x) => x.event === e).length, 1, `one ${e} event: ${JSON.stringify(ev)}`);
  }
  return tokens;
}

/** Waits until the history page's timeline has drawn (or said there is nothing to draw). */
async function timelineReady(page) {
  await page.waitForFunction(() => {
    const c = document.querySelector("#timeline-chart");
    return c && c.getAttribute("aria-busy") === "false" && (c.querySelector(".tl-svg") || c.dataset.empty === "true");
  });
}

/** In the page: horizontal overflow of the document, and of an open dialog if given. */
function overflowIn(dialogSel) {
  const s = document.scrollingElement;
  const out = { scrollWidth: s.scrollWidth, clientWidth: s.clientWidth };
  if (dialogSel) {
    const d = document.querySelector(dialogSel);
    const r = d.getBoundingClientRect();
    Object.assign(out, { dialogScroll: d.scrollWidth, dialogClient: d.clientWidth, dialogLeft: r.left, dialogRight: r.right, viewport: window.innerWidth });
  }
  return out;
}

function assertNoOverflow(o, what) {
  assert.ok(o.scrollWidth <= o.clientWidth, `${what}: page is ${o.scrollWidth} px wide in ${o.clientWidth} px`);
  if (o.dialogScroll !== undefined) {
    assert.ok(o.dialogScroll <= o.dialogClient, `${what}: the dialog scrolls sideways (${o.dialogScroll} > ${o.dialogClient})`);
    assert.ok(o.dialogLeft >= 0 && o.dialogRight <= o.viewport, `${what}: the dialog is inside the viewport ${JSON.stringify(o)}`);
  }
}

/** In the page: visible controls under rootSel shorter than min px (buttons, links, inputs, tabs, timeline items). */
function smallTargetsIn({ rootSel, min }) {
  const root = document.querySelector(rootSel);
  const sel = 'button, a[href], input:not([type="hidden"]), select, textarea, summary, [role="tab"], .tl-item';
  return [...root.querySelectorAll(sel)]
    .filter((e) => !e.classList.contains("skip-link") && e.checkVisibility({ visibilityProperty: true }))
    .map((e) => ({ e, r: e.getBoundingClientRect() }))
    .filter(({ r }) => r.width > 0 && r.height + 0.5 < min)
    .map(({ e, r }) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${String(e.getAttribute("class") || "").replace(/ /g, ".")} "${(e.textContent || e.getAttribute("aria-label") || "").trim().slice(0, 30)}" ${Math.round(r.height)} px`);
}

/**
 * In the page: WCAG 2 contrast ratios from computed colours. `named` maps a name to a
 * selector whose text colour is measured against the background it is drawn on (rgba
 * backgrounds composited over what lies under them, down to an opaque one); `borders` the
 * same for a control's border against the background around it; `sweepSel` measures every
 * visible text under it and returns those below AA (4.5, or 3 for large text).
 */
function contrastIn({ named = {}, borders = {}, placeholders = {}, sweepSel = null }) {
  function parse(c) {
    let m = c.match(/^rgba?\(([^)]+)\)$/);
    if (m) {
      const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    }
    m = c.match(/^color\(srgb ([^)]+)\)$/);
    if (m) {
      const p = m[1].split(/[\s/]+/).filter(Boolean).map(Number);
      return [p[0] * 255, p[1] * 255, p[2] * 255, p.length > 3 ? p[3] : 1];
    }
    throw new Error(`cannot read the colour ${c}`);
  }
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  function background(el) {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let base = [255, 255, 255, 1]; // the canvas under an unpainted page
    for (let i = layers.length - 1; i >= 0; i--) base = over(layers[i], base);
    return base;
  }
  const lin = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return Math.round(((x + 0.05) / (y + 0.05)) * 100) / 100;
  };
  function text(el, pseudo) {
    // SVG shapes paint no background: the chart's box is what SVG text is drawn on.
    const bg = background(el instanceof SVGElement ? el.closest("svg").parentElement : el);
    const cs = getComputedStyle(el, pseudo);
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (Number(cs.fontWeight) >= 700 && size >= 18.66);
    const fg = el instanceof SVGElement ? cs.fill : cs.color; // SVG text is painted with fill
    return { ratio: ratio(over(parse(fg), bg), bg), need: large ? 3 : 4.5 };
  }
  const out = { named: {}, borders: {}, failures: [], checked: 0, lowest: null };
  for (const [name, sel] of Object.entries(named)) {
    const el = document.querySelector(sel);
    out.named[name] = el ? text(el).ratio : `missing: ${sel}`;
  }
  for (const [name, sel] of Object.entries(placeholders)) {
    const el = document.querySelector(sel);
    out.named[name] = el ? text(el, "::placeholder").ratio : `missing: ${sel}`;
  }
  for (const [name, sel] of Object.entries(borders)) {
    const el = document.querySelector(sel);
    if (!el) {
      out.borders[name] = `missing: ${sel}`;
      continue;
    }
    const bg = background(el.parentElement);
    out.borders[name] = ratio(over(parse(getComputedStyle(el).borderTopColor), bg), bg);
  }
  if (sweepSel) {
    const walker = document.createTreeWalker(document.querySelector(sweepSel), NodeFilter.SHOW_TEXT);
    const seen = new Set();
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!n.textContent.trim() || seen.has(el)) continue;
      seen.add(el);
      const r = el.getBoundingClientRect();
      if (!r.width || !r.height || !el.checkVisibility({ visibilityProperty: true, opacityProperty: true })) continue;
      if (el.closest(":disabled, .skip-link")) continue; // disabled controls are exempt
      out.checked += 1;
      const t = text(el);
      if (!out.lowest || t.ratio < out.lowest.ratio) out.lowest = { ratio: t.ratio, text: n.textContent.trim().slice(0, 24) };
      if (t.ratio < t.need) out.failures.push(`${el.tagName.toLowerCase()}.${el.className} "${n.textContent.trim().slice(0, 30)}" ${t.ratio} < ${t.need}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------- browser

let browser;

/** A fresh page with collectors for JS errors, CSP violations and JS dialogs (alert). */
async function newPage(opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, acceptDownloads: true, ...opts });
  const page = await context.newPage();
  const problems = { pageErrors: [], csp: [], dialogs: [] };
  page.on("pageerror", (e) => problems.pageErrors.push(e.message));
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) problems.csp.push(m.text());
  });
  page.on("dialog", (d) => {
    problems.dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  page.problems = problems;
  page.done = async () => {
    assert.deepEqual(problems.pageErrors, [], "no JavaScript errors");
    assert.deepEqual(problems.csp, [], "no Content-Security-Policy violations");
    assert.deepEqual(problems.dialogs, [], "no JavaScript dialogs");
    await context.close();
  };
  return page;
}

async function openChat(page, svc, conversation) {
  await page.goto(`${svc.url}/ui/?conversation=${encodeURIComponent(conversation)}`);
  await page.waitForFunction(() => window.lockStatus && document.body.dataset.demo);
}

async function openLockStatus(page) {
  await page.click("#settings-open-button");
  await page.waitForSelector("#settings-modal[open]");
  await page.click(OPEN_BUTTON);
  await page.waitForSelector(`${MODAL}[open]`);
  await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
}

function lockItem(page, field) {
  return page.locator(`${MODAL} li.ll-lock[data-field="${field}"]`);
}

async function badge(page, field) {
  return (await lockItem(page, field).locator(".ll-badge").textContent()).trim();
}

async function refresh(page) {
  await page.click(`${MODAL} .ll-refresh`);
  await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
}

/** Clicks Refresh until the lock's badge reads `want`. */
async function refreshUntil(page, field, want, timeoutMs = 5000) {
  await eventually(async () => {
    await refresh(page);
    return (await badge(page, field)) === want;
  }, `${field} to show ${want}`, timeoutMs, 150);
}

// ---------------------------------------------------------------- tests

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill("SIGKILL");
});

describe("Lock Status modal and history page (service without --demo)", () => {
  let svc;
  before(async () => {
    svc = await startService();
  });
  after(async () => {
    await svc?.stop();
  });

  test("every page and asset is served from the binary, with a strict CSP on pages", async () => {
    for (const [p, type] of [
      ["/ui/", "text/html"],
      ["/ui/history", "text/html"],
      ["/ui/app.css", "text/css"],
      ["/ui/app.js", "text/javascript"],
      ["/ui/history.js", "text/javascript"],
      ["/ui/timeline.js", "text/javascript"],
      ["/ui/widget/lockledger.js", "text/javascript"],
      ["/ui/widget/lockledger.css", "text/css"],
    ]) {
      const resp = await fetch(svc.url + p);
      assert.equal(resp.status, 200, p);
      assert.ok(resp.headers.get("content-type").startsWith(type), `${p}: ${resp.headers.get("content-type")}`);
      assert.ok((await resp.text()).length > 500, `${p} has content`);
    }
    const root = await fetch(svc.url + "/", { headers: { Accept: "text/html" } });
    assert.match(root.headers.get("content-security-policy"), /script-src 'self'/);
    assert.match(await root.text(), /lockledger\.js/);
  });

  test("the Lock Status button is in Settings with its id, title, text and icon, and opens the modal", async () => {
    const page = await newPage();
    await openChat(page, svc, "t-button");
    await page.click("#settings-open-button");
    const button = page.locator(OPEN_BUTTON);
    await button.waitFor();
    assert.equal(await button.count(), 1);
    assert.equal(await button.getAttribute("title"), "Check and clear lock files that may be stuck");
    assert.equal((await button.textContent()).trim(), "Lock Status");
    assert.equal(await button.evaluate((b) => b.tagName), "BUTTON");
    assert.equal(await button.locator("svg").count(), 1, "inline SVG lock icon");
    assert.match(await button.getAttribute("class"), /warning/);
    assert.equal(
      await button.evaluate((b) => b.parentElement.id),
      "settings-quick-actions",
      "it sits in the Settings modal's quick-actions row"
    );
    const bg = await button.evaluate((b) => getComputedStyle(b).backgroundColor);
    assert.notEqual(bg, "rgba(0, 0, 0, 0)", "warning style has a background");
    await button.click();
    const modal = page.locator(MODAL);
    await modal.waitFor();
    assert.equal(await modal.evaluate((d) => d.tagName + ":" + d.open), "DIALOG:true");
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    // Every lock type is listed, and all are clear.
    const fields = await page.$$eval(`${MODAL} li.ll-lock`, (lis) => lis.map((li) => li.dataset.field));
    assert.deepEqual(fields, ["", "all", "message_operations", "memory", "messages", "uploaded_documents_list", "artefacts"]);
    assert.equal((await lockItem(page, "").locator(".ll-lock-name").textContent()).trim(), "(main)");
    for (const f of fields) assert.equal(await badge(page, f), "CLEAR");
    assert.equal(await page.locator(`${MODAL} .ll-clear`).isVisible(), false, "nothing to clear: no Clear button");
    assert.equal(
      await page.locator(`${MODAL} .ll-history-link`).getAttribute("href"),
      "/ui/history?owner=t-button"
    );
    await page.done();
  });

  test("a held lock shows HELD with its pid; SIGKILLed it is STALE (holder_dead); Clear asks, clears, shows CLEAR", () => withService({}, async (svc) => {
    const conv = "t-stale";
    const h = await hold(svc, conv, "messages", ["--operation", "send_message"]);
    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);

    const item = lockItem(page, "messages");
    assert.equal(await badge(page, "messages"), "HELD");
    assert.equal(await item.locator('[data-fact="pid"] dd').textContent(), String(h.pid));
    assert.equal(await item.locator('[data-fact="operation"] dd').textContent(), "send_message");
    assert.equal(await item.locator('[data-fact="holder"] dd').textContent(), "lockledger-cli");
    assert.match(await item.locator('[data-fact="age"] dd').textContent(), /\d s$/);
    assert.equal(await page.locator(`${MODAL} .ll-clear`).isVisible(), false, "a live holder is not clearable");
    const heldColour = await item.locator(".ll-badge").evaluate((b) => getComputedStyle(b).backgroundColor);

    await kill9(h);
    await refresh(page);
    assert.equal(await badge(page, "messages"), "STALE");
    const staleText = await item.textContent();
    assert.match(staleText, /holder_dead/);
    assert.match(staleText, /process that held it is gone/);
    const staleColour = await item.locator(".ll-badge").evaluate((b) => getComputedStyle(b).backgroundColor);
    assert.notEqual(heldColour, staleColour, "HELD and STALE are coloured differently");

    const clearBtn = page.locator(`${MODAL} .ll-clear`);
    assert.equal(await clearBtn.isVisible(), true, "Clear stuck locks is offered");
    await clearBtn.click();
    const confirm = page.locator(`${MODAL} .ll-confirm`);
    await confirm.waitFor();
    assert.match(await confirm.textContent(), /Clear 1 stuck lock/);
    assert.match(await confirm.textContent(), /messages/);
    // Nothing happened yet: the confirmation comes first.
    assert.equal((await lockOf(svc, conv, "messages")).state, "stale");
    assert.equal(await page.evaluate(() => document.activeElement.className), "ll-btn ll-btn-danger ll-confirm-yes");

    await page.click(`${MODAL} .ll-confirm-yes`);
    const result = page.locator(`${MODAL} .ll-result`);
    await result.waitFor();
    svc.assertBeforeReconcile("the clear");
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    assert.match(await result.locator(".ll-result-cleared").textContent(), /t-stale_messages\.lock/);
    assert.equal(await result.getAttribute("aria-live"), "polite");
    // Everything is clear afterwards (success): success styling and words.
    assert.match(await result.getAttribute("class"), /\bll-result--ok\b/);
    assert.equal((await result.locator(".ll-result-title").textContent()).trim(), "Cleared 1 stuck lock: all clear now");
    assert.match(await result.locator('.ll-outcome[data-field="messages"] .ll-outcome-note').textContent(), /^messages: cleared \(holder dead, token \d+\)$/);
    assert.equal(await badge(page, "messages"), "CLEAR", "the fresh status shows it clear");
    assert.equal(await clearBtn.isVisible(), false);
    assert.equal((await lockOf(svc, conv, "messages")).state, "free");
    const cleared = (await api(svc, "GET", `/api/v1/history?owner=${conv}&event=cleared`)).data.events;
    assert.equal(cleared.length, 1);
    assert.equal(cleared[0].actor, "user:lock-status-modal", "the modal names itself as the actor");
    await page.done();
  }));

  test("a live holder is reported as skipped and stays HELD while a dead one is cleared", () => withService({}, async (svc) => {
    const conv = "t-live";
    const live = await hold(svc, conv, "memory", ["--operation", "save_memory", "--holder", "memory-writer"]);
    const dead = await hold(svc, conv, "messages");
    await kill9(dead);
    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    assert.equal(await badge(page, "memory"), "HELD");
    assert.equal(await badge(page, "messages"), "STALE");

    await page.click(`${MODAL} .ll-clear`);
    await page.click(`${MODAL} .ll-confirm-yes`);
    const result = page.locator(`${MODAL} .ll-result`);
    await result.locator(".ll-result-skipped").waitFor();
    svc.assertBeforeReconcile("the clear");
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    assert.match(await result.locator(".ll-result-cleared").textContent(), /t-live_messages\.lock/);
    const skipped = await result.locator(".ll-result-skipped").textContent();
    assert.match(skipped, /memory/);
    assert.match(skipped, new RegExp(`pid ${live.pid}`));
    assert.match(skipped, /memory-writer/);
    assert.equal(await badge(page, "memory"), "HELD", "the live holder stays");
    assert.equal(await badge(page, "messages"), "CLEAR");
    assert.equal((await lockOf(svc, conv, "memory")).pid, live.pid);
    live.child.kill("SIGTERM");
    await exited(live.child);
    await page.done();
  }));

  test("Clear sends the tokens it showed: a lock that changed since is skipped", () => withService({}, async (svc) => {
    const conv = "t-token";
    const first = await hold(svc, conv, "messages");
    await kill9(first);
    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    assert.equal(await badge(page, "messages"), "STALE");
    // Behind the modal's back: cleared, taken again by a new holder that also dies.
    assert.equal((await api(svc, "POST", `/ensure_locks_cleared/${conv}`, { body: {} })).status, 200);
    const second = await hold(svc, conv, "messages");
    await kill9(second);
    assert.notEqual(second.token, first.token);

    await page.click(`${MODAL} .ll-clear`);
    await page.click(`${MODAL} .ll-confirm-yes`);
    const skipped = page.locator(`${MODAL} .ll-result-skipped`);
    await skipped.waitFor();
    svc.assertBeforeReconcile("the clear");
    assert.match(await skipped.textContent(), /changed since you looked/);
    assert.equal((await lockOf(svc, conv, "messages")).token, second.token, "the newer grant was left alone");
    await page.done();
  }));

  test("force clear needs the admin token and a typed confirmation, then the lock is CLEAR", async () => {
    const conv = "t-force";
    // A live lease (the service holds the flock) and a live library holder (a process).
    const lease = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, {
      body: { holder: "stuck-stream", operation: "stream_reply", ttl_ms: 600000 },
    });
    assert.equal(lease.status, 200, JSON.stringify(lease.data));
    const lib = await hold(svc, conv, "memory", ["--operation", "save_memory"]);

    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    assert.equal(await badge(page, "messages"), "HELD");
    assert.equal(await page.locator(`${MODAL} .ll-force`).count(), 0, "no force clear without the admin token");

    // A wrong token is refused and not kept.
    await page.click(`${MODAL} .ll-admin summary`);
    await page.fill(`${MODAL} .ll-admin input[type=password]`, "not-the-admin-token");
    await page.click(`${MODAL} .ll-admin-save`);
    await page.waitForFunction((m) => /not accepted/.test(document.querySelector(m + " .ll-admin-state").textContent), MODAL);
    assert.equal(await page.locator(`${MODAL} .ll-force`).count(), 0);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("lockledger.adminToken")), null);

    await page.fill(`${MODAL} .ll-admin input[type=password]`, svc.adminToken);
    await page.click(`${MODAL} .ll-admin-save`);
    await lockItem(page, "messages").locator(".ll-force").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("lockledger.adminToken")), svc.adminToken);
    assert.equal(await page.evaluate(() => localStorage.length), 0, "never in localStorage");

    await lockItem(page, "messages").locator(".ll-force").click();
    const panel = lockItem(page, "messages").locator(".ll-force-panel");
    await panel.waitFor();
    const go = panel.locator(".ll-force-go");
    assert.equal(await go.isDisabled(), true);
    await panel.locator(".ll-force-confirm").fill("memory");
    await panel.locator(".ll-force-reason").fill("stream hung in a browser test");
    assert.equal(await go.isDisabled(), true, "the wrong field name does not confirm");
    await panel.locator(".ll-force-confirm").fill("messages");
    await panel.locator(".ll-force-reason").fill("");
    assert.equal(await go.isDisabled(), true, "a reason is required");
    await panel.locator(".ll-force-reason").fill("stream hung in a browser test");
    assert.equal(await go.isDisabled(), false);
    await go.click();
    const result = page.locator(`${MODAL} .ll-result`);
    await result.locator(".ll-result-cleared").waitFor();
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    assert.match(await result.textContent(), /t-force_messages\.lock/);
    assert.match(await result.textContent(), /fencing/);
    assert.equal(await badge(page, "messages"), "CLEAR", "a revoked lease is released at once");
    assert.equal((await api(svc, "POST", `/api/v1/leases/${lease.data.lease_id}/renew`, { body: {} })).status, 410);

    // The library holder is asked to let go (the answer says it still holds the file lock);
    // `hold` sees it on its next renewal and exits 5.
    await lockItem(page, "memory").locator(".ll-force").click();
    const panel2 = lockItem(page, "memory").locator(".ll-force-panel");
    await panel2.locator(".ll-force-confirm").fill("FORCE");
    await panel2.locator(".ll-force-reason").fill("memory writer hung");
    await panel2.locator(".ll-force-go").click();
    await result.locator(".ll-result-revoked").waitFor();
    assert.match(await result.locator(".ll-result-revoked").textContent(), new RegExp(`process ${lib.pid} still holds the file lock`));
    assert.equal((await exited(lib.child)).code, 5, "the revoked holder exits with code 5");
    await refreshUntil(page, "memory", "CLEAR");

    const hist = await api(svc, "GET", `/api/v1/history?owner=${conv}&event=force_cleared`);
    assert.equal(hist.data.events.length, 2);
    assert.ok(hist.data.events.every((e) => e.actor === "admin:lock-status-modal"), JSON.stringify(hist.data.events));
    assert.ok(hist.data.events.some((e) => e.reason.startsWith("stream hung in a browser test")), JSON.stringify(hist.data.events));
    await page.done();
  });

  test("a holder label with markup is shown as text: no element, no script", () => withService({}, async (svc) => {
    const conv = "t-xss";
    const r = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, {
      body: { holder: XSS, operation: "<script>alert(2)</script>", ttl_ms: 600000 },
    });
    assert.equal(r.status, 200, JSON.stringify(r.data));
    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    const text = await lockItem(page, "messages").textContent();
    assert.ok(text.includes(XSS), "the label is displayed literally");
    assert.ok(text.includes("<script>alert(2)</script>"));
    assert.equal(await page.locator("img").count(), 0, "no img element was created");
    assert.equal(await page.locator(`${MODAL} script`).count(), 0);

    // Skipped reasons in a clear result name the holder too.
    const dead = await hold(svc, conv, "all");
    await kill9(dead);
    await refresh(page);
    await page.click(`${MODAL} .ll-clear`);
    await page.click(`${MODAL} .ll-confirm-yes`);
    await page.locator(`${MODAL} .ll-result-skipped`).waitFor();
    svc.assertBeforeReconcile("the clear");
    // The clear answer's sentences come without markup characters (the chat app inserts
    // them as HTML); the widget shows them as text all the same.
    const skippedText = await page.locator(`${MODAL} .ll-result-skipped`).textContent();
    assert.ok(skippedText.includes("img src=x onerror=alert(1)"), skippedText);
    assert.ok(skippedText.includes("messages"), skippedText);
    assert.ok((await lockItem(page, "messages").textContent()).includes(XSS), "the status still shows the label as it is");
    assert.equal(await page.locator("img").count(), 0);

    // The history page and the SQL console show it as text as well.
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await page.locator("#events-body tr[data-event-id]").first().waitFor();
    assert.ok((await page.locator("#events-body").textContent()).includes(XSS));
    assert.equal(await page.locator("img").count(), 0);
    // The timeline's bars, tooltip and table too.
    await page.locator('#timeline-chart .tl-hold[data-field="messages"]').waitFor();
    assert.ok((await page.getAttribute('#timeline-chart .tl-hold[data-field="messages"]', "aria-label")).includes(XSS));
    await page.focus('#timeline-chart .tl-hold[data-field="messages"]');
    assert.ok((await page.textContent("#timeline-tip")).includes(XSS));
    assert.ok((await page.textContent("#timeline-tables")).includes("<script>alert(2)</script>"));
    assert.equal(await page.locator("img").count(), 0);
    assert.equal(await page.locator("#timeline script").count(), 0);
    await page.evaluate((t) => sessionStorage.setItem("lockledger.adminToken", t), svc.adminToken);
    await page.goto(`${svc.url}/ui/history#sql`);
    await page.fill("#sql-input", `SELECT holder FROM current_locks WHERE owner = '${conv}'`);
    await page.click("#sql-run");
    await page.locator("#sql-table tbody tr").first().waitFor();
    assert.ok((await page.locator("#sql-table tbody").textContent()).includes(XSS));
    assert.equal(await page.locator("img").count(), 0);
    await page.waitForTimeout(200);
    await page.done(); // includes: no alert() dialog fired
  }));

  test("history page: the modal's link, filters, newest first, pagination and CSV export", async () => {
    const conv = "t-hist";
    // 7 lease cycles: 14 events (acquired + released), with two holders and three fields.
    const plan = [
      ["messages", "alice"],
      ["memory", "bob"],
      ["messages", "alice"],
      ["all", "bob"],
      ["messages", "alice"],
      ["memory", "alice"],
      ["messages", "bob"],
    ];
    for (const [field, holder] of plan) {
      const g = await api(svc, "POST", `/api/v1/locks/${conv}/${field}/acquire`, { body: { holder, operation: "op-" + field } });
      assert.equal(g.status, 200);
      assert.equal((await api(svc, "DELETE", `/api/v1/leases/${g.data.lease_id}`, { body: {} })).status, 200);
    }
    const all = (await api(svc, "GET", `/api/v1/history?owner=${conv}&limit=100`)).data.events;
    assert.equal(all.length, 14);

    const page = await newPage();
    // The Lock Status modal links to this conversation's history.
    await openChat(page, svc, conv);
    await openLockStatus(page);
    const href = await page.locator(`${MODAL} .ll-history-link`).getAttribute("href");
    assert.equal(href, `/ui/history?owner=${conv}`);
    await page.goto(svc.url + href + "&limit=5");
    assert.equal(await page.inputValue("#f-owner"), conv, "owner read from the URL");
    assert.equal(await page.inputValue("#f-limit"), "5");

    const ids = async () => {
      await page.waitForFunction(() => document.querySelector("#events-table").getAttribute("aria-busy") === "false");
      return page.$$eval("#events-body tr[data-event-id]", (trs) => trs.map((t) => Number(t.dataset.eventId)));
    };
    const page1 = await ids();
    assert.deepEqual(page1, all.slice(0, 5).map((e) => e.event_id), "newest first, 5 per page");
    assert.equal(await page.isDisabled("#page-newer"), true);
    await page.click("#page-older");
    const page2 = await ids();
    assert.deepEqual(page2, all.slice(5, 10).map((e) => e.event_id));
    await page.click("#page-older");
    const page3 = await ids();
    assert.deepEqual(page3, all.slice(10, 14).map((e) => e.event_id));
    assert.equal(await page.isDisabled("#page-older"), true, "no older page after the last");
    await page.click("#page-newer");
    assert.deepEqual(await ids(), page2);
    await page.click("#page-newer");
    assert.deepEqual(await ids(), page1);

    // Filters: event, field, holder; each narrows the rows and lands in the URL.
    await page.selectOption("#f-limit", "50");
    await page.selectOption("#f-event", "released");
    let rows = await ids();
    assert.equal(rows.length, 7);
    assert.deepEqual(
      await page.$$eval("#events-body tr[data-event-id] td:nth-child(3)", (tds) => [...new Set(tds.map((t) => t.textContent))]),
      ["released"]
    );
    assert.match(page.url(), /event=released/);
    await page.selectOption("#f-field", "messages");
    rows = await ids();
    assert.equal(rows.length, 4);
    await page.fill("#f-holder", "alice");
    await page.click("#f-apply");
    rows = await ids();
    assert.equal(rows.length, 3);
    assert.deepEqual(
      rows,
      all.filter((e) => e.event === "released" && e.field === "messages" && e.holder === "alice").map((e) => e.event_id)
    );
    assert.match(page.url(), /owner=t-hist/);
    assert.match(page.url(), /holder=alice/);

    // CSV export of the current filters (fetched, saved as a Blob) downloads text with the
    // CSV header, the 3 filtered events and the "# rows: 3" trailer, and says how many rows.
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 10000 }), page.click("#csv-export")]);
    assert.match(download.suggestedFilename(), /^lock-history-t-hist-\d{8}-\d{6}\.csv$/);
    const csv = fs.readFileSync(await download.path(), "utf8");
    assert.ok(csv.startsWith("event_id,at,"), csv.slice(0, 80));
    const lines = csv.trim().split("\n");
    assert.equal(lines.length, 1 + 3 + 1, "header, the 3 filtered events and the trailer");
    assert.equal(lines[4], "# rows: 3");
    assert.ok(lines.slice(1, 4).every((l) => l.includes(",t-hist,messages,released,")), csv);
    await page.waitForFunction(() => /Exported 3 rows/.test(document.querySelector("#csv-status").textContent), null, { timeout: 5000 });

    // A time window after every event matches nothing; a bad owner shows the service's error.
    await page.fill("#f-since", "2999-01-01T00:00:00");
    await page.click("#f-apply");
    await page.waitForFunction(() => /No events match/.test(document.querySelector("#events-body").textContent));
    await page.click("#f-reset");
    await page.fill("#f-owner", "../etc/passwd");
    await page.click("#f-apply");
    await page.locator("#events-error").waitFor();
    assert.match(await page.textContent("#events-error"), /invalid_id|owner/i);
    await page.done();
  });

  test("SQL tab: runs a read-only query with the admin token, refuses a DELETE and shows the error", async () => {
    const page = await newPage();
    await page.goto(`${svc.url}/ui/history`);
    await page.click("#tab-sql");
    assert.equal(await page.getAttribute("#tab-sql", "aria-selected"), "true");
    assert.equal(await page.isVisible("#panel-events"), false);

    // Without the token: the console says so.
    await page.fill("#sql-input", "SELECT count(*) FROM lock_events");
    await page.click("#sql-run");
    await page.locator("#sql-error").waitFor();
    assert.match(await page.textContent("#sql-error"), /admin token/);

    await page.fill("#sql-token", svc.adminToken);
    await page.click("#sql-run");
    await page.locator("#sql-table tbody tr").first().waitFor();
    const expected = (await api(svc, "POST", "/api/v1/sql", { body: { sql: "SELECT count(*) FROM lock_events" }, admin: true })).data;
    assert.deepEqual(await page.$$eval("#sql-table thead th", (ths) => ths.map((t) => t.textContent)), expected.columns);
    assert.equal(Number(await page.textContent("#sql-table tbody td")), expected.rows[0][0]);
    assert.match(await page.textContent("#sql-status"), /1 row/);
    assert.equal(await page.isVisible("#sql-error"), false);

    const lockRows = (await api(svc, "POST", "/api/v1/sql", { body: { sql: "SELECT count(*) FROM locks" }, admin: true })).data.rows[0][0];
    await page.fill("#sql-input", "DELETE FROM locks");
    await page.click("#sql-run");
    await page.waitForFunction(() => !document.querySelector("#sql-error").hidden);
    const err = await page.textContent("#sql-error");
    assert.match(err, /read_only|read-only/i, err);
    assert.equal(await page.isVisible("#sql-result-wrap"), false);
    const after = (await api(svc, "POST", "/api/v1/sql", { body: { sql: "SELECT count(*) FROM locks" }, admin: true })).data.rows[0][0];
    assert.equal(after, lockRows, "nothing was deleted");

    // A result over the row cap says it was truncated.
    await page.fill("#sql-input", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) SELECT i FROM n");
    await page.click("#sql-run");
    await page.waitForFunction(() => /Truncated/.test(document.querySelector("#sql-status").textContent));
    assert.equal(await page.locator("#sql-table tbody tr").count(), 1000);

    // The token lives in sessionStorage (shared with the modal), keyboard: Ctrl+Enter runs.
    assert.equal(await page.evaluate(() => sessionStorage.getItem("lockledger.adminToken")), svc.adminToken);
    await page.fill("#sql-input", "SELECT 42 AS answer");
    await page.focus("#sql-input");
    await page.keyboard.press("Control+Enter");
    await page.waitForFunction(() => document.querySelector("#sql-table tbody td")?.textContent === "42");
    await page.done();
  });

  test("dark mode: the page and the modal follow prefers-color-scheme", async () => {
    const colours = {};
    for (const scheme of ["light", "dark"]) {
      const page = await newPage({ colorScheme: scheme });
      await openChat(page, svc, "t-dark");
      await openLockStatus(page);
      colours[scheme] = {
        body: await page.evaluate(() => getComputedStyle(document.body).backgroundColor),
        modal: await page.evaluate((m) => getComputedStyle(document.querySelector(m)).backgroundColor, MODAL),
        text: await page.evaluate((m) => getComputedStyle(document.querySelector(m)).color, MODAL),
      };
      await page.done();
    }
    assert.notEqual(colours.light.body, colours.dark.body, JSON.stringify(colours));
    assert.notEqual(colours.light.modal, colours.dark.modal, JSON.stringify(colours));
    assert.notEqual(colours.light.text, colours.dark.text, JSON.stringify(colours));
  });

  test("keyboard: Settings and Lock Status open with Enter, Escape closes the modal and focus returns", async () => {
    const page = await newPage();
    await openChat(page, svc, "t-keys");
    await page.focus("#settings-open-button");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#settings-modal[open]");
    // Tab through the Settings modal to the Lock Status button.
    let found = false;
    for (let i = 0; i < 10 && !found; i++) {
      await page.keyboard.press("Tab");
      found = await page.evaluate((id) => document.activeElement.id === id, OPEN_BUTTON.slice(1));
    }
    assert.ok(found, "the Lock Status button is reachable with Tab");
    assert.ok(
      await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle !== "none"),
      "focus is visible"
    );
    await page.keyboard.press("Enter");
    await page.waitForSelector(`${MODAL}[open]`);
    assert.equal(await page.evaluate((m) => document.querySelector(m).contains(document.activeElement), MODAL), true, "focus moved into the modal");
    assert.equal(await page.getAttribute(MODAL, "aria-labelledby") !== null, true);
    await page.keyboard.press("Escape");
    await page.waitForFunction((m) => !document.querySelector(m).open, MODAL);
    assert.equal(await page.evaluate(() => document.activeElement.id), OPEN_BUTTON.slice(1), "focus back on the button");
    assert.equal(await page.evaluate(() => document.querySelector("#settings-modal").open), true, "Settings still open");
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => !document.querySelector("#settings-modal").open);
    assert.equal(await page.evaluate(() => document.activeElement.id), "settings-open-button");
    // The widget API: open() and close().
    await page.evaluate(() => window.lockStatus.open());
    await page.waitForSelector(`${MODAL}[open]`);
    await page.evaluate(() => window.lockStatus.close());
    await page.waitForFunction((m) => !document.querySelector(m).open, MODAL);
    await page.done();
  });

  test("without --demo the chat page says so and still works as a Lock Status demo", async () => {
    const page = await newPage();
    await openChat(page, svc, "t-nodemo");
    assert.equal(await page.getAttribute("body", "data-demo"), "off");
    assert.match(await page.textContent("#mode-note"), /Demo mode is off/);
    assert.equal(await page.isVisible("#demo-tools"), false);
    const convs = await page.$$eval("#conversation-list button", (bs) => bs.map((b) => b.dataset.conversationId));
    assert.ok(convs.length >= 3, "demo conversations are listed");
    await page.fill("#composer-input", "hello");
    await page.click("#send-button");
    await page.waitForFunction(() => document.querySelectorAll("#messages .msg--note").length > 0);
    assert.equal(await page.isDisabled("#stop-button"), true);
    // Switching conversations changes what the modal shows.
    await page.click(`#conversation-list button[data-conversation-id="${convs[1]}"]`);
    await openLockStatus(page);
    assert.match(await page.textContent(`${MODAL} .ll-sub`), new RegExp(convs[1]));
    await page.done();
  });

  test("screenshot of the open modal (held, stale and clear locks)", () => withService({}, async (svc) => {
    const conv = "demo-screenshot";
    const live = await hold(svc, conv, "messages", ["--operation", "send_message", "--holder", "chat-app"]);
    const dead = await hold(svc, conv, "memory", ["--operation", "save_memory", "--holder", "chat-app"]);
    await kill9(dead);
    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    assert.equal(await badge(page, "messages"), "HELD");
    assert.equal(await badge(page, "memory"), "STALE");
    svc.assertBeforeReconcile("the screenshot");
    const file = path.join(SHOT_DIR, "lockledger-lock-status-modal.png");
    await page.screenshot({ path: file });
    console.log(`# screenshot: ${file}`);
    live.child.kill("SIGTERM");
    await exited(live.child);
    await page.done();
  }));
});

describe("what a clear really did, per lock (each test on a service of its own)", () => {
  test("a safe clear says per lock: cleared, left alone (live holder: who, doing what, how long, what frees it), changed since you looked", () => withService({}, async (svc) => {
    const conv = "t-outcomes";
    const dead = await hold(svc, conv, "messages", ["--operation", "send_message"]);
    await kill9(dead);
    const live = await hold(svc, conv, "memory", ["--operation", "save_memory", "--holder", "memory-writer"]);
    const page = await newPage();
    try {
      const lease = await api(svc, "POST", `/api/v1/locks/${conv}/all/acquire`, {
        body: { holder: "stream", operation: "stream_reply", ttl_ms: 600000 },
      });
      assert.equal(lease.status, 200, JSON.stringify(lease.data));
      await openChat(page, svc, conv);
      await openLockStatus(page);
      assert.equal(await badge(page, "messages"), "STALE");
      assert.equal(await badge(page, "memory"), "HELD");
      assert.equal(await badge(page, "all"), "HELD");

      // Behind the modal's back: the lease is released after the user looked.
      assert.equal((await api(svc, "DELETE", `/api/v1/leases/${lease.data.lease_id}`, { body: {} })).status, 200);
      await page.click(`${MODAL} .ll-clear`);
      await page.click(`${MODAL} .ll-confirm-yes`);
      const result = page.locator(`${MODAL} .ll-result`);
      await result.locator(".ll-outcome").first().waitFor({ timeout: 10000 });
      svc.assertBeforeReconcile("the clear");
      await modalIdle(page);

      const outcomes = await outcomesIn(page);
      assert.deepEqual(
        outcomes.map((o) => [o.field, o.outcome]).sort(),
        [["all", "changed"], ["memory", "live"], ["messages", "cleared"]],
        JSON.stringify(outcomes)
      );
      const by = Object.fromEntries(outcomes.map((o) => [o.field, o]));
      assert.equal(by.messages.word, "Cleared");
      assert.equal(by.messages.note, `messages: cleared (holder dead, token ${dead.token})`);
      assert.equal(by.memory.word, "Left alone: live holder");
      assert.equal(by.memory.now, "now HELD");
      for (const want of ["memory-writer", `pid ${live.pid}`, "save_memory", "frees when that process lets go"]) {
        assert.ok(by.memory.note.includes(want), `the live note says ${want}: ${by.memory.note}`);
      }
      assert.match(by.memory.note, / for \d+ s;/, "how long it has been held");
      assert.equal(by.all.word, "Changed since you looked: free now");
      assert.equal(by.all.note, "all: changed since you looked; it is free now");
      assert.equal(by.all.now, "now CLEAR");

      // Not everything is clear: no success styling, and the heading says what is left.
      assert.match(await result.getAttribute("class"), /\bll-result--warn\b/);
      assert.doesNotMatch(await result.getAttribute("class"), /ll-result--ok/);
      assert.equal((await result.locator(".ll-result-title").textContent()).trim(), "Cleared 1 lock, but 1 lock is still held");
      // The fresh status agrees.
      assert.equal(await badge(page, "messages"), "CLEAR");
      assert.equal(await badge(page, "memory"), "HELD");
      assert.equal(await badge(page, "all"), "CLEAR");

      const shot = path.join(SHOT_DIR, "lockledger-clear-outcomes.png");
      await result.screenshot({ path: shot });
      console.log(`# screenshot: ${shot}`);
      // The result reads at 360 px without sideways scroll.
      await page.setViewportSize({ width: 360, height: 740 });
      assertNoOverflow(await page.evaluate(overflowIn, MODAL), "Lock Status modal with a clear result at 360 px");
      assert.deepEqual(await page.evaluate(smallTargetsIn, { rootSel: MODAL, min: 44 }), [], "tap targets under 44 px");
    } finally {
      await stopChild(live);
    }
    await page.done();
  }));

  test("a clear that a reconcile raced says 'changed since you looked; it is free now', with success styling", () => withService({}, async (svc) => {
    const conv = "t-raced";
    const dead = await hold(svc, conv, "messages");
    await kill9(dead);
    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    assert.equal(await badge(page, "messages"), "STALE");
    // The service's reconciler frees the dead holder's record after the user looked.
    const rc = await api(svc, "POST", "/api/v1/reconcile", { body: {}, admin: true });
    assert.equal(rc.status, 200, JSON.stringify(rc.data));
    assert.equal((await lockOf(svc, conv, "messages")).state, "free");

    await page.click(`${MODAL} .ll-clear`);
    await page.click(`${MODAL} .ll-confirm-yes`);
    const result = page.locator(`${MODAL} .ll-result`);
    await result.locator(".ll-outcome").first().waitFor({ timeout: 10000 });
    await modalIdle(page);
    const outcomes = await outcomesIn(page);
    assert.deepEqual(outcomes.map((o) => [o.field, o.outcome, o.note]), [["messages", "changed", "messages: changed since you looked; it is free now"]]);
    assert.match(await result.getAttribute("class"), /\bll-result--ok\b/, "nothing is held or stale: success");
    assert.equal((await result.locator(".ll-result-title").textContent()).trim(), "Nothing needed clearing: all clear now");
    assert.doesNotMatch(await result.textContent(), /live holder|still held/, "it does not claim a live holder");
    assert.equal(await badge(page, "messages"), "CLEAR");
    await page.done();
  }));

  test("force clear of a holder that keeps its file lock: revoked, process N still holds it (no success styling), next steps; a lease is free at once", () => withService({}, async (svc) => {
    const conv = "t-revoked";
    // A library holder that never renews: it keeps its kernel lock and does not learn of
    // the revocation by itself.
    const lib = await hold(svc, conv, "messages", ["--operation", "send_message", "--holder", "chat-worker", "--renew-ms", "0"]);
    const page = await newPage({ viewport: { width: 360, height: 740 } });
    try {
      const lease = await api(svc, "POST", `/api/v1/locks/${conv}/memory/acquire`, {
        body: { holder: "stream", operation: "stream_reply", ttl_ms: 600000 },
      });
      assert.equal(lease.status, 200, JSON.stringify(lease.data));
      await openChat(page, svc, conv);
      await page.evaluate((t) => sessionStorage.setItem("lockledger.adminToken", t), svc.adminToken);
      await openLockStatus(page);
      const result = page.locator(`${MODAL} .ll-result`);
      const force = async (field, reason) => {
        await lockItem(page, field).locator(".ll-force").click();
        const panel = lockItem(page, field).locator(".ll-force-panel");
        await panel.locator(".ll-force-confirm").fill("FORCE");
        await panel.locator(".ll-force-reason").fill(reason);
        await panel.locator(".ll-force-go").click();
      };

      // The lease: the service holds its file lock and lets go at once.
      await force("memory", "stream stuck");
      await result.locator('.ll-result-cleared .ll-outcome[data-field="memory"]').waitFor({ timeout: 10000 });
      await modalIdle(page);
      assert.match(await result.getAttribute("class"), /\bll-result--ok\b/);
      assert.equal((await result.locator(".ll-result-title").textContent()).trim(), "Force-cleared memory: it is free now");
      let outcomes = await outcomesIn(page);
      assert.equal(outcomes[0].word, "Force-cleared: free now");
      assert.match(outcomes[0].note, /^lock t-revoked\/memory was force-cleared \(token \d+ -> \d+\); it is free now$/);
      assert.equal(await badge(page, "memory"), "CLEAR");

      // The library holder: revoked, but it still holds the file lock.
      await force("messages", "worker hung");
      await result.locator(".ll-result-revoked").waitFor({ timeout: 10000 });
      await modalIdle(page);
      const heading = (await result.locator(".ll-result-title").textContent()).trim();
      assert.equal(heading, `Revoked messages, but process ${lib.pid} still holds the file lock`);
      assert.doesNotMatch(heading, /cleared/i);
      assert.match(await result.getAttribute("class"), /\bll-result--warn\b/);
      assert.doesNotMatch(await result.getAttribute("class"), /ll-result--ok/, "no success styling");
      assert.equal(await result.locator(".ll-result-cleared").count(), 0, "nothing is listed as cleared");
      const item = result.locator('.ll-outcome[data-field="messages"]');
      assert.equal(await item.getAttribute("data-still-held-by"), String(lib.pid));
      outcomes = await outcomesIn(page);
      assert.equal(outcomes[0].word, `Revoked: still held by process ${lib.pid}`);
      assert.match(
        outcomes[0].note,
        new RegExp(`^lock t-revoked/messages was revoked \\(token ${lib.token} -> \\d+\\), but process ${lib.pid} still holds the file lock; its writes are now refused \\(fenced\\); the lock frees when that process lets go or ends$`)
      );
      // Next steps: the fresh status, a button to check again, the lock's history.
      await page.waitForFunction((m) => /still held by process \d+/.test(document.querySelector(`${m} .ll-recheck`).textContent), MODAL, { timeout: 5000 });
      assert.match(await item.locator(".ll-recheck").textContent(), new RegExp(`still held by process ${lib.pid}`));
      assert.equal(await item.locator(".ll-recheck-button").isVisible(), true);
      assert.equal(await item.locator(".ll-lock-history").getAttribute("href"), `/ui/history?owner=${conv}&field=messages`);
      // The status: HELD, "asked to let go", no second force clear.
      assert.equal(await badge(page, "messages"), "HELD");
      assert.equal((await lockItem(page, "messages").locator(".ll-tag--revoke").textContent()).trim(), "asked to let go");
      assert.match(await lockItem(page, "messages").textContent(), new RegExp(`process ${lib.pid} was asked to let go but still holds the file lock`));
      assert.equal(await lockItem(page, "messages").locator(".ll-force").count(), 0);

      for (const scheme of ["light", "dark"]) {
        await page.emulateMedia({ colorScheme: scheme });
        const shot = path.join(SHOT_DIR, `lockledger-force-revoked-${scheme}.png`);
        await result.screenshot({ path: shot });
        console.log(`# screenshot: ${shot}`);
      }
      // 360 px: no sideways scroll, 44 px tap targets; WCAG AA in dark and light mode.
      assertNoOverflow(await page.evaluate(overflowIn, MODAL), "force clear result at 360 px");
      assert.deepEqual(await page.evaluate(smallTargetsIn, { rootSel: MODAL, min: 44 }), [], "tap targets under 44 px");
      for (const scheme of ["dark", "light"]) {
        await page.emulateMedia({ colorScheme: scheme });
        const r = await page.evaluate(contrastIn, {
          named: {
            "revoked word": `${MODAL} .ll-result-revoked .ll-outcome-word`,
            "re-check line": `${MODAL} .ll-recheck`,
            "asked to let go tag": `${MODAL} .ll-tag--revoke`,
            "history link": `${MODAL} .ll-lock-history`,
          },
          borders: { "Check again": `${MODAL} .ll-recheck-button` },
          sweepSel: MODAL,
        });
        for (const [name, v] of Object.entries(r.named)) assert.ok(typeof v === "number" && v >= 4.5, `${scheme}: ${name} is ${v}:1`);
        for (const [name, v] of Object.entries(r.borders)) assert.ok(typeof v === "number" && v >= 3, `${scheme}: edge of ${name} is ${v}:1`);
        assert.deepEqual(r.failures, [], `${scheme}: text under AA`);
        console.log(`# contrast ${scheme} revoked result: ${Object.entries(r.named).map(([k, v]) => `${k} ${v}`).join(", ")}; ${r.checked} texts swept`);
      }
      await page.emulateMedia({ colorScheme: "light" });

      // The history page's timeline says the same: revoked, still held, bar to now.
      const hist = await newPage();
      await hist.goto(`${svc.url}/ui/history?owner=${conv}`);
      await timelineReady(hist);
      const bar = hist.locator('#timeline-chart .tl-hold[data-field="messages"]');
      assert.equal(await bar.getAttribute("data-ending"), "force_cleared");
      assert.equal(await bar.getAttribute("data-still-held"), "true");
      assert.ok((await bar.getAttribute("aria-label")).includes(`process ${lib.pid} still holds the file lock`));
      await bar.focus();
      await hist.locator("#timeline-tip").waitFor({ state: "visible", timeout: 5000 });
      assert.match(await hist.textContent("#timeline-tip"), new RegExp(`revoked, but process ${lib.pid} still holds the file lock`));
      await hist.done();

      // The holder lets go: Check again says the lock is free.
      await stopChild(lib);
      await eventually(async () => {
        await item.locator(".ll-recheck-button").click();
        await modalIdle(page);
        return /is free now/.test(await item.locator(".ll-recheck").textContent());
      }, "the re-check to say free", 5000, 150);
      assert.equal(await badge(page, "messages"), "CLEAR");
    } finally {
      await stopChild(lib);
    }
    await page.done();
  }));

  test("a lock file whose key is not configured, held by another process, is listed HELD with 'not configured'; a replaced file and a second holder are warnings", async (t) => {
    if (!HAVE_FILELOCK) {
      t.skip("python3 filelock is not installed (python3 -m pip install --break-system-packages filelock)");
      return;
    }
    await withService({}, async (svc) => {
      const conv = "t-unconf";
      const locks = path.join(svc.dir, "locks");
      const holders = [];
      const page = await newPage();
      try {
        const summaries = await fileLockHolder(path.join(locks, `${conv}_summaries.lock`));
        holders.push(summaries);
        // A lease whose lock file is deleted, then created and locked again by another process.
        const lease = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, { body: { holder: "stream", operation: "stream_reply", ttl_ms: 600000 } });
        assert.equal(lease.status, 200, JSON.stringify(lease.data));
        fs.rmSync(path.join(locks, `${conv}_messages.lock`));
        const other = await fileLockHolder(path.join(locks, `${conv}_messages.lock`));
        holders.push(other);
        const dead = await hold(svc, conv, "memory");
        await kill9(dead);

        await openChat(page, svc, conv);
        await openLockStatus(page);
        const fields = await page.$$eval(`${MODAL} li.ll-lock`, (lis) => lis.map((li) => li.dataset.field));
        assert.deepEqual(fields, ["", "all", "message_operations", "memory", "messages", "uploaded_documents_list", "artefacts", "summaries"]);
        const item = lockItem(page, "summaries");
        assert.equal(await badge(page, "summaries"), "HELD");
        assert.equal((await item.locator(".ll-lock-name").textContent()).trim(), "summaries");
        assert.equal((await item.locator(".ll-tag--unconfigured").textContent()).trim(), "not configured");
        assert.equal(await item.getAttribute("data-configured"), "false");
        assert.equal(await item.locator('[data-fact="pid"] dd').textContent(), String(summaries.pid));
        assert.match(await item.textContent(), /lockledger does not manage/);
        assert.match(await page.textContent(`${MODAL} .ll-summary`), /1 on a key that is not configured/);
        assert.equal(await lockItem(page, "messages").locator(".ll-tag--unconfigured").count(), 0, "configured keys have no tag");

        const messages = lockItem(page, "messages");
        assert.match(await messages.locator(".ll-file-replaced").textContent(), /Warning: Its lock file was deleted or replaced while it was held/);
        const conflict = await messages.locator(".ll-conflict").textContent();
        assert.match(conflict, /Two processes believe they hold this lock/);
        assert.ok(conflict.includes(`process ${other.pid}`), conflict);
        assert.match(conflict, /python3/);

        // A clear: memory is cleared; summaries is left alone and still held, so no success.
        await page.click(`${MODAL} .ll-clear`);
        await page.click(`${MODAL} .ll-confirm-yes`);
        const result = page.locator(`${MODAL} .ll-result`);
        await result.locator(".ll-outcome").first().waitFor({ timeout: 10000 });
        svc.assertBeforeReconcile("the clear");
        await modalIdle(page);
        const by = Object.fromEntries((await outcomesIn(page)).map((o) => [o.field, o]));
        assert.equal(by.memory.outcome, "cleared");
        assert.equal(by.summaries.outcome, "external");
        assert.equal(by.summaries.word, "Left alone: held outside lockledger");
        assert.equal(by.summaries.tag, "not configured");
        assert.equal(by.summaries.now, "now HELD");
        assert.ok(by.summaries.note.includes(`pid ${summaries.pid}`) && /not configured/.test(by.summaries.note), by.summaries.note);
        assert.match(await result.getAttribute("class"), /\bll-result--warn\b/);
        assert.equal(await badge(page, "summaries"), "HELD", "still listed after the clear");
        assertNoOverflow(await page.evaluate(overflowIn, MODAL), "modal with warnings");
        const shot = path.join(SHOT_DIR, "lockledger-replaced-and-conflict.png");
        await lockItem(page, "messages").screenshot({ path: shot });
        console.log(`# screenshot: ${shot}`);
      } finally {
        for (const h of holders) await stopChild(h);
      }
      await page.done();
    });
  });

  test("history page with a user token: it asks for the token, then loads; CSV export sends it and saves every row with the count", () => withService({ token: "browser-user-token-1" }, async (svc) => {
    const conv = "t-csvtoken";
    for (let i = 0; i < 6; i++) {
      const g = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, { body: { holder: `h${i}`, operation: "op" } });
      assert.equal(g.status, 200, JSON.stringify(g.data));
      assert.equal((await api(svc, "DELETE", `/api/v1/leases/${g.data.lease_id}`, { body: {} })).status, 200);
    }
    // A bare link (no token header) is refused: that is why the page fetches.
    assert.equal((await fetch(`${svc.url}/api/v1/history?owner=${conv}&format=csv`)).status, 401);

    const page = await newPage();
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await page.locator("#user-token-form").waitFor({ state: "visible", timeout: 5000 });
    assert.match(await page.textContent("#user-token-state"), /needs an access token/);
    await page.locator("#events-error").waitFor({ timeout: 5000 });
    assert.equal(await page.evaluate(() => document.activeElement.id), "user-token", "focus goes to the token field");
    await page.fill("#user-token", svc.userToken);
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.querySelectorAll("#events-body tr[data-event-id]").length === 12, null, { timeout: 5000 });
    assert.equal(await page.isVisible("#events-error"), false);
    await timelineReady(page);
    assert.equal(await page.locator("#timeline-chart .tl-hold").count(), 6);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("lockledger.userToken")), svc.userToken);
    assert.equal(await page.evaluate(() => localStorage.length), 0, "never in localStorage");

    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 10000 }), page.click("#csv-export")]);
    const csv = fs.readFileSync(await download.path(), "utf8");
    const lines = csv.trim().split("\n");
    assert.ok(lines[0].startsWith("event_id,at,"), lines[0]);
    assert.equal(lines.length, 1 + 12 + 1, csv);
    assert.equal(lines[13], "# rows: 12");
    assert.ok(lines.slice(1, 13).every((l) => l.includes(`,${conv},messages,`)), csv);
    await page.waitForFunction(() => /^Exported 12 rows to lock-history-t-csvtoken-\d{8}-\d{6}\.csv/.test(document.querySelector("#csv-status").textContent), null, { timeout: 5000 });
    assert.equal(await page.isDisabled("#csv-export"), false);
    assert.equal(await page.isVisible("#csv-cancel"), false);

    // The chat page's Lock Status modal in the same tab uses the same token.
    await openChat(page, svc, conv);
    await openLockStatus(page);
    assert.equal(await page.isVisible(`${MODAL} .ll-error`), false);
    assert.equal(await badge(page, "messages"), "CLEAR");
    await page.done();
  }));

  test("folded busy answers show their count: 'wait_timeout ×5' in the table and in the timeline mark; the lock filter offers artefacts", () => withService({}, async (svc) => {
    const conv = "t-folded";
    const lease = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, { body: { holder: "writer", operation: "op", ttl_ms: 600000 } });
    assert.equal(lease.status, 200, JSON.stringify(lease.data));
    // One row per lock, asker and minute: keep the five answers inside one minute.
    const s = new Date().getSeconds();
    if (s >= 57) await new Promise((r) => setTimeout(r, (61 - s) * 1000));
    for (let i = 0; i < 5; i++) {
      const busy = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, { body: { holder: "busy-asker", operation: "op-busy", wait_ms: 0 } });
      assert.equal(busy.status, 409, JSON.stringify(busy.data));
    }
    await eventually(async () => {
      const ev = (await api(svc, "GET", `/api/v1/history?owner=${conv}&event=wait_timeout`)).data.events;
      return ev.length === 1 && ev[0].count === 5;
    }, "one wait_timeout row with count 5", 5000, 100);

    const page = await newPage();
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await timelineReady(page);
    await page.waitForFunction(() => document.querySelector("#events-table").getAttribute("aria-busy") === "false");
    assert.equal(await page.locator('#f-field option[value="artefacts"]').count(), 1);
    const cell = page.locator("#events-body .event--wait_timeout");
    assert.equal(await cell.count(), 1);
    assert.match(await cell.textContent(), /^wait_timeout ×5/);
    assert.equal(await cell.getAttribute("title"), "5 busy answers folded into this row");
    const mark = page.locator('#timeline-chart .tl-mark[data-kind="wait_timeout"]');
    assert.equal(await mark.getAttribute("data-count"), "5");
    assert.match(await mark.getAttribute("aria-label"), /×5/);
    await mark.focus();
    await page.locator("#timeline-tip").waitFor({ state: "visible", timeout: 5000 });
    const tip = await page.textContent("#timeline-tip");
    assert.ok(tip.includes("×5") && tip.includes("5 busy answers folded into one row"), tip);
    await page.click("#timeline-details summary");
    assert.match(await page.textContent("#timeline-tables .tl-marks-table"), /Busy answer or wait timed out ×5/);
    await page.done();
  }));

  test("a symlink and a FIFO among the lock files are UNSAFE on their own locks; the others show as usual; Clear skips them", () => withService({}, async (svc) => {
    const conv = "t-unsafe";
    const locks = path.join(svc.dir, "locks");
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), "lockledger-outside-"));
    const precious = path.join(outside, "precious.txt");
    fs.writeFileSync(precious, "keep");
    const live = await hold(svc, conv, "messages", ["--operation", "send_message"]);
    const dead = await hold(svc, conv, "all");
    await kill9(dead);
    fs.symlinkSync(precious, path.join(locks, `${conv}_memory.lock`));
    assert.equal(spawnSync("mkfifo", [path.join(locks, `${conv}_summaries.lock`)]).status, 0, "mkfifo");
    const page = await newPage();
    try {
      await openChat(page, svc, conv);
      await openLockStatus(page);
      assert.equal(await badge(page, "memory"), "UNSAFE");
      assert.equal(await badge(page, "summaries"), "UNSAFE");
      assert.equal(await badge(page, "messages"), "HELD");
      assert.equal(await badge(page, "all"), "STALE");
      assert.equal(await badge(page, "artefacts"), "CLEAR");
      const memory = lockItem(page, "memory");
      assert.match(await memory.getAttribute("class"), /\bll-lock--unsafe\b/);
      assert.match(await memory.locator(".ll-lock-reason").textContent(), /Not a regular lock file: a symbolic link is at this lock's path/);
      assert.match(await memory.locator(".ll-note").textContent(), /t-unsafe_memory\.lock is a symbolic link/);
      assert.match(await lockItem(page, "summaries").locator(".ll-note").textContent(), /FIFO/);
      assert.match(await page.textContent(`${MODAL} .ll-summary`), /2 not a regular lock file/);

      await page.click(`${MODAL} .ll-clear`);
      await page.click(`${MODAL} .ll-confirm-yes`);
      const result = page.locator(`${MODAL} .ll-result`);
      await result.locator(".ll-outcome").first().waitFor({ timeout: 10000 });
      await modalIdle(page);
      const by = Object.fromEntries((await outcomesIn(page)).map((o) => [o.field, o]));
      assert.equal(by.all.outcome, "cleared");
      assert.equal(by.messages.outcome, "live");
      for (const f of ["memory", "summaries"]) {
        assert.equal(by[f].outcome, "unsafe_lock_file", JSON.stringify(by[f]));
        assert.equal(by[f].word, "Left alone: not a regular lock file");
        assert.equal(by[f].now, "now UNSAFE");
      }
      assert.equal(
        (await result.locator(".ll-result-title").textContent()).trim(),
        "Cleared 1 lock, but 1 lock is still held and 2 lock files are not a regular file"
      );
      assert.match(await result.getAttribute("class"), /\bll-result--warn\b/);
      assert.equal(fs.readFileSync(precious, "utf8"), "keep", "nothing written through the symlink");
      assert.ok(fs.lstatSync(path.join(locks, `${conv}_summaries.lock`)).isFIFO());
    } finally {
      await stopChild(live);
      fs.rmSync(outside, { recursive: true, force: true });
    }
    await page.done();
  }));

  test("the force-clear reason box agrees with the service: at most 200 bytes, said plainly", () => withService({}, async (svc) => {
    const conv = "t-reason";
    const lease = await api(svc, "POST", `/api/v1/locks/${conv}/messages/acquire`, { body: { holder: "stream", operation: "stream_reply", ttl_ms: 600000 } });
    assert.equal(lease.status, 200, JSON.stringify(lease.data));
    // The service's own limit: 201 bytes is refused, naming the lock.
    const refused = await api(svc, "POST", `/force_clear_locks/${conv}`, { body: { tokens: { messages: lease.data.token }, reason: "x".repeat(201) }, admin: true });
    assert.equal(refused.status, 200, JSON.stringify(refused.data));
    assert.match(refused.data.failed[0].reason, /lock t-reason\/messages: a force-clear reason must be at most 200 bytes/);

    const page = await newPage();
    await openChat(page, svc, conv);
    await openLockStatus(page);
    await page.click(`${MODAL} .ll-admin summary`);
    await page.fill(`${MODAL} .ll-admin input[type=password]`, svc.adminToken);
    await page.click(`${MODAL} .ll-admin-save`);
    await lockItem(page, "messages").locator(".ll-force").click();
    const panel = lockItem(page, "messages").locator(".ll-force-panel");
    await panel.waitFor();
    const reason = panel.locator(".ll-force-reason");
    const hint = panel.locator(".ll-force-reason-hint");
    const go = panel.locator(".ll-force-go");
    assert.equal(await reason.getAttribute("maxlength"), "200");
    assert.equal(await reason.getAttribute("aria-describedby"), await hint.getAttribute("id"));
    await panel.locator(".ll-force-confirm").fill("messages");
    // 150 characters, 300 bytes: within maxlength, over the service's limit.
    await reason.fill("é".repeat(150));
    assert.equal(await go.isDisabled(), true, "too many bytes");
    assert.match(await hint.textContent(), /Too long: this reason is 300 bytes; the service keeps at most 200/);
    assert.match(await hint.getAttribute("class"), /\bll-error\b/);
    const exact = "y".repeat(200);
    await reason.fill(exact);
    assert.equal(await go.isDisabled(), false);
    assert.equal((await hint.textContent()).trim(), "At most 200 bytes (200 used).");
    await go.click();
    const result = page.locator(`${MODAL} .ll-result`);
    await result.locator(".ll-result-cleared").waitFor();
    const hist = await api(svc, "GET", `/api/v1/history?owner=${conv}&event=force_cleared`);
    assert.equal(hist.data.events.length, 1, JSON.stringify(hist.data));
    assert.ok(hist.data.events[0].reason.startsWith(exact), hist.data.events[0].reason);
    await page.done();
  }));
});

describe("history timeline, narrow screens and dark-mode contrast", () => {
  const ENDS = {
    released: ["messages", "rel-holder", "op-release"],
    expired: ["memory", "exp-holder", "op-expire"],
    force_cleared: ["all", "force-holder", "op-force"],
    cleared: ["uploaded_documents_list", "crash-holder", "op-crash"],
    reconciled: ["", "gone-holder", "op-gone"],
    held: ["message_operations", "live-holder", "op-live"],
  };

  test("timeline: one bar per hold coloured by how it ended, busy answers as marks, tooltip on focus and hover, a bar filters the table", () => withService({}, async (svc) => {
    const conv = "t-timeline";
    const tokens = await makeHolds(svc, conv);
    const page = await newPage();
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await timelineReady(page);

    // One lane per lock, the busiest (the held lock with its busy answer) first.
    const lanes = await page.$$eval("#timeline-chart .tl-lane", (gs) => gs.map((g) => g.dataset.field));
    assert.equal(lanes.length, 6, JSON.stringify(lanes));
    assert.equal(lanes[0], "message_operations");
    assert.deepEqual([...lanes].sort(), Object.values(ENDS).map((e) => e[0]).sort());

    // One bar per hold, on its lock's lane, with its token, ending and colour.
    const bars = await page.$$eval("#timeline-chart .tl-hold", (gs) =>
      gs.map((g) => {
        const bar = g.querySelector(".tl-bar").getBoundingClientRect();
        return {
          ending: g.dataset.ending,
          field: g.dataset.field,
          lane: g.closest(".tl-lane").dataset.field,
          token: Number(g.dataset.token),
          cls: g.getAttribute("class"),
          role: g.getAttribute("role"),
          tabindex: g.getAttribute("tabindex"),
          name: g.getAttribute("aria-label"),
          fill: getComputedStyle(g.querySelector(".tl-bar")).fill,
          stroke: getComputedStyle(g.querySelector(".tl-bar")).stroke,
          right: bar.right,
        };
      })
    );
    assert.equal(bars.length, 6, JSON.stringify(bars));
    for (const [ending, [field, holder, operation]] of Object.entries(ENDS)) {
      const b = bars.find((x) => x.ending === ending);
      assert.ok(b, `a bar that ended ${ending}: ${JSON.stringify(bars)}`);
      assert.equal(b.field, field, ending);
      assert.equal(b.lane, field, `${ending} is on its lock's lane`);
      assert.equal(b.token, tokens[ending], `${ending} is matched by token`);
      assert.match(b.cls, new RegExp(`\\btl-end--${ending}\\b`));
      assert.equal(b.role, "button");
      assert.equal(b.tabindex, "0");
      assert.ok(b.name.includes(holder) && b.name.includes(operation), b.name);
    }
    assert.equal(new Set(bars.map((b) => b.fill)).size, 6, `six fills (colour and pattern): ${bars.map((b) => b.fill)}`);
    assert.equal(new Set(bars.map((b) => b.stroke)).size, 6, `six colours: ${bars.map((b) => b.stroke)}`);
    const held = bars.find((b) => b.ending === "held");
    assert.ok(bars.every((b) => b.right <= held.right), "the still-held bar reaches furthest: to now");

    // The busy answer is a mark on the held lock's lane.
    const marks = await page.$$eval("#timeline-chart .tl-mark", (gs) => gs.map((g) => ({ kind: g.dataset.kind, lane: g.closest(".tl-lane").dataset.field, name: g.getAttribute("aria-label"), tabindex: g.getAttribute("tabindex") })));
    assert.deepEqual(marks.map((m) => [m.kind, m.lane, m.tabindex]), [["wait_timeout", "message_operations", "0"]]);
    assert.match(marks[0].name, /busy-asker/);

    // The legend names every ending and its pattern in words.
    const legend = await page.textContent("#timeline-legend");
    for (const words of ["Released", "Expired", "Cleared", "Force cleared", "Reconciled", "Still held", "diagonal stripes", "cross-hatched", "Busy answer"]) {
      assert.ok(legend.includes(words), `legend says ${words}: ${legend}`);
    }
    assert.match(await page.textContent("#timeline-status"), /6 holds and 1 mark on 6 locks/);

    // Keyboard: Tab reaches the bars; focus shows the tooltip with holder, operation, token.
    await page.focus("#f-reset");
    let ending = null;
    for (let i = 0; i < 20 && ending !== "released"; i++) {
      await page.keyboard.press("Tab");
      ending = await page.evaluate(() => document.activeElement.dataset?.ending ?? null);
    }
    assert.equal(ending, "released", "Tab reaches the released bar");
    const tip = page.locator("#timeline-tip");
    await tip.waitFor({ state: "visible" });
    const tipText = await tip.textContent();
    for (const want of ["rel-holder", "op-release", `Token${tokens.released}`, "Released", "Held for"]) {
      assert.ok(tipText.includes(want), `tooltip has ${want}: ${tipText}`);
    }
    await page.keyboard.press("Escape");
    await tip.waitFor({ state: "hidden" });

    // Hover shows it too.
    await page.hover('#timeline-chart .tl-hold[data-ending="expired"] .tl-bar');
    await page.waitForFunction(() => /exp-holder/.test(document.querySelector("#timeline-tip:not([hidden])")?.textContent || ""));
    assert.match(await tip.textContent(), /Expired.*diagonal stripes/);
    // Leaving hides it (after a short grace, so the pointer can move onto the tooltip).
    await page.mouse.move(0, 0);
    await tip.waitFor({ state: "hidden" });
    await page.hover('#timeline-chart .tl-mark[data-kind="wait_timeout"]');
    await page.waitForFunction(() => /busy-asker/.test(document.querySelector("#timeline-tip:not([hidden])")?.textContent || ""));

    // Screenshots of the timeline, light and dark, as test artefacts.
    await page.mouse.move(0, 0);
    await page.evaluate(() => document.activeElement.blur());
    await tip.waitFor({ state: "hidden" });
    for (const scheme of ["light", "dark"]) {
      await page.emulateMedia({ colorScheme: scheme });
      const file = path.join(SHOT_DIR, `timeline-${scheme}.png`);
      await page.locator("#timeline").screenshot({ path: file });
      console.log(`# screenshot: ${file}`);
    }
    await page.emulateMedia({ colorScheme: "light" });

    // Enter on a bar filters the table to that hold: owner, lock and a window around it.
    const rowsNow = () =>
      page.$$eval("#events-body tr[data-event-id]", (trs) =>
        trs.map((t) => ({ event: t.children[2].textContent, lock: t.children[3].textContent, token: t.children[6].textContent, marked: t.classList.contains("is-highlight") }))
      );
    const tableReady = () => page.waitForFunction(() => document.querySelector("#events-table").getAttribute("aria-busy") === "false");
    await page.focus('#timeline-chart .tl-hold[data-ending="released"]');
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => /field=messages/.test(location.search) && /since=/.test(location.search) && /until=/.test(location.search));
    await tableReady();
    await timelineReady(page);
    assert.equal(await page.inputValue("#f-owner"), conv);
    assert.equal(await page.inputValue("#f-field"), "messages");
    let rows = await rowsNow();
    assert.deepEqual(rows.filter((r) => r.marked).map((r) => r.event), ["released", "acquired"], JSON.stringify(rows));
    assert.ok(rows.every((r) => r.lock === `${conv}messages`), JSON.stringify(rows));
    assert.ok(rows.filter((r) => r.marked).every((r) => r.token === String(tokens.released)));
    assert.match(await page.textContent("#events-status"), /2 of them belong to the hold picked on the timeline/);
    assert.equal(await page.evaluate(() => document.activeElement.dataset?.ending), "released", "focus stays on the bar");
    assert.equal(await page.locator("#timeline-chart .tl-hold").count(), 1, "the timeline follows the filters");

    // A click does the same; the still-held bar has no end, so the window stays open.
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await timelineReady(page);
    await page.click('#timeline-chart .tl-hold[data-ending="force_cleared"] .tl-bar');
    await page.waitForFunction(() => /field=all/.test(location.search));
    await tableReady();
    rows = await rowsNow();
    assert.deepEqual(rows.filter((r) => r.marked).map((r) => r.event), ["force_cleared", "acquired"], JSON.stringify(rows));
    await page.click("#f-reset");
    await page.fill("#f-owner", conv);
    await page.click("#f-apply");
    await timelineReady(page);
    await page.waitForFunction(() => document.querySelectorAll("#timeline-chart .tl-hold").length === 6);
    await page.click('#timeline-chart .tl-hold[data-ending="held"] .tl-bar');
    await page.waitForFunction(() => /field=message_operations/.test(location.search) && /since=/.test(location.search));
    assert.doesNotMatch(page.url(), /until=/);
    await tableReady();
    rows = await rowsNow();
    assert.deepEqual(rows.filter((r) => r.marked).map((r) => r.event), ["acquired"]);
    assert.ok(rows.some((r) => r.event === "wait_timeout"), "the busy answer during the hold is in the window");

    // The same holds as a table, for screen readers.
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await timelineReady(page);
    await page.click("#timeline-details summary");
    const holdRows = await page.$$eval("#timeline-tables .tl-holds-table tbody tr", (trs) => trs.map((t) => t.textContent));
    assert.equal(holdRows.length, 6);
    for (const words of ["Released", "Expired", "Force cleared", "Cleared", "Reconciled", "Still held"]) {
      assert.ok(holdRows.some((r) => r.includes(words)), `table row ${words}`);
    }
    assert.equal(await page.locator("#timeline-tables .tl-marks-table tbody tr").count(), 1);
    await page.click('#timeline-tables .tl-holds-table tbody tr:has-text("crash-holder") button');
    await page.waitForFunction(() => /field=uploaded_documents_list/.test(location.search));
    await tableReady();
    rows = await rowsNow();
    assert.deepEqual(rows.filter((r) => r.marked).map((r) => r.event), ["cleared", "acquired"]);

    // The global view: one lane per owner, the busiest first, at most 12, saying how many are left out.
    for (let i = 0; i < 14; i++) {
      const g = await api(svc, "POST", `/api/v1/locks/t-quiet-${i}/messages/acquire`, { body: { holder: "q", operation: "op" } });
      assert.equal((await api(svc, "DELETE", `/api/v1/leases/${g.data.lease_id}`, { body: {} })).status, 200);
    }
    await page.goto(`${svc.url}/ui/history`);
    await timelineReady(page);
    const owners = await page.$$eval("#timeline-chart .tl-lane", (gs) => gs.map((g) => g.dataset.owner));
    assert.equal(owners.length, 12);
    assert.equal(owners[0], conv);
    assert.match(await page.textContent("#timeline-notes"), /12 busiest owners are shown; 3 quieter owners are left out/);
    await page.done();
  }));

  test("360 px wide: no horizontal scroll on the chat page, its modals and the history page; tap targets of 44 px", () => withService({}, async (svc) => {
    const conv = "t-narrow";
    await makeHolds(svc, conv);
    const dead = await hold(svc, conv, "messages", ["--operation", "send_message"]);
    await kill9(dead);
    const page = await newPage({ viewport: { width: 360, height: 740 } });
    const check = async (what, dialog, root) => {
      const o = await page.evaluate(overflowIn, dialog);
      assertNoOverflow(o, what);
      const small = await page.evaluate(smallTargetsIn, { rootSel: root, min: 44 });
      assert.deepEqual(small, [], `${what}: tap targets under 44 px`);
      console.log(`# 360 px ${what}: ${o.scrollWidth} px in ${o.clientWidth} px`);
    };
    await openChat(page, svc, conv);
    await check("chat page", null, "body");
    const stop = await page.locator("#stop-button").boundingBox();
    assert.ok(stop.x + stop.width <= 360, `Stop is inside the screen: ${JSON.stringify(stop)}`);
    await page.click("#settings-open-button");
    await page.waitForSelector("#settings-modal[open]");
    await check("Settings modal", "#settings-modal", "#settings-modal");
    await page.click(OPEN_BUTTON);
    await page.waitForSelector(`${MODAL}[open]`);
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    assert.equal(await badge(page, "messages"), "STALE");
    await page.click(`${MODAL} .ll-admin summary`);
    await check("Lock Status modal", MODAL, MODAL);

    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await timelineReady(page);
    await page.waitForFunction(() => document.querySelector("#events-table").getAttribute("aria-busy") === "false");
    await check("history page", null, "body");
    // The timeline fits the width; each bar's hit area is a full 44 px row.
    const svgBox = await page.locator("#timeline-chart svg.tl-svg").boundingBox();
    assert.ok(svgBox.x >= 0 && svgBox.x + svgBox.width <= 360, JSON.stringify(svgBox));
    assert.equal(await page.locator("#timeline-chart .tl-hold").count(), 7, "6 holds and the dead messages holder");
    // The events table is a stack of cards: every cell visible, with its label.
    const card = await page.$eval("#events-body tr[data-event-id]", (tr) => ({
      display: getComputedStyle(tr).display,
      width: tr.getBoundingClientRect().width,
      cells: [...tr.children]
        .filter((td) => td.checkVisibility())
        .map((td) => [getComputedStyle(td, "::before").content.replace(/"/g, ""), td.getBoundingClientRect().right]),
    }));
    assert.equal(card.display, "block", "a row is a card");
    assert.ok(card.cells.length >= 6, JSON.stringify(card));
    assert.ok(card.cells.every(([label, right]) => label && right <= 360), JSON.stringify(card));
    assert.deepEqual(card.cells.slice(0, 4).map((c) => c[0]), ["#", "When", "Event", "Lock"]);
    await page.click("#timeline-details summary");
    await check("history page with the timeline table open", null, "body");
    await page.click("#tab-sql");
    await check("history page, SQL tab", null, "body");
    await page.done();
  }));

  test("dark mode meets WCAG AA: primary buttons, text, links, muted text, badges and control edges", () => withService({}, async (svc) => {
    const conv = "t-contrast";
    await makeHolds(svc, conv);
    const dead = await hold(svc, conv, "messages", ["--operation", "send_message"]);
    await kill9(dead);
    const results = {};
    for (const scheme of ["dark", "light"]) {
      const page = await newPage();
      await page.emulateMedia({ colorScheme: scheme });
      const measure = async (where, args) => {
        const r = await page.evaluate(contrastIn, args);
        results[`${scheme} ${where}`] = r;
        for (const [name, v] of Object.entries(r.named)) {
          assert.equal(typeof v, "number", `${scheme} ${where} ${name}: ${v}`);
          assert.ok(v >= 4.5, `${scheme} ${where}: ${name} is ${v}:1, under 4.5:1`);
        }
        for (const [name, v] of Object.entries(r.borders)) {
          assert.equal(typeof v, "number", `${scheme} ${where} ${name}: ${v}`);
          assert.ok(v >= 3, `${scheme} ${where}: the edge of ${name} is ${v}:1, under 3:1`);
        }
        assert.deepEqual(r.failures, [], `${scheme} ${where}: text under AA`);
        assert.ok(r.checked > 5 || !args.sweepSel, `${scheme} ${where}: measured ${r.checked} texts`);
      };
      await openChat(page, svc, conv);
      assert.equal(await page.evaluate(() => matchMedia("(prefers-color-scheme: dark)").matches), scheme === "dark");
      await measure("chat page", {
        named: { "Send (primary button)": "#send-button", "body text": "#conversation-title", link: ".topnav a", "muted text": ".sidebar-title", "Settings button": "#settings-open-button" },
        borders: { "the message box": "#composer-input", "the Settings button": "#settings-open-button" },
        placeholders: { "message box placeholder": "#composer-input" },
        sweepSel: "body",
      });
      await openLockStatus(page);
      await measure("Lock Status modal", {
        named: {
          "HELD badge": `${MODAL} .ll-badge--held`,
          "STALE badge": `${MODAL} .ll-badge--stale`,
          "CLEAR badge": `${MODAL} .ll-badge--free`,
          "Clear stuck locks (danger button)": `${MODAL} .ll-clear`,
          "Refresh (secondary button)": `${MODAL} .ll-refresh`,
          "history link": `${MODAL} .ll-history-link`,
          "muted text": `${MODAL} .ll-sub`,
        },
        borders: { "Refresh": `${MODAL} .ll-refresh`, "Close": `${MODAL} .ll-close-x` },
        sweepSel: MODAL,
      });
      await page.keyboard.press("Escape");
      await measure("Settings modal", { named: { "Lock Status (warning button)": OPEN_BUTTON }, sweepSel: "#settings-modal" });

      await page.goto(`${svc.url}/ui/history?owner=${conv}`);
      await timelineReady(page);
      await page.waitForFunction(() => document.querySelector("#events-table").getAttribute("aria-busy") === "false");
      await page.click("#timeline-details summary");
      await measure("history page", {
        named: {
          "Apply filters (primary button)": "#f-apply",
          "body text": "#timeline-title",
          "owner link": "#events-body a.owner",
          "muted text": "#events-status",
          "acquired badge": "#events-body .event--acquired",
          "released badge": "#events-body .event--released",
          "force_cleared badge": "#events-body .event--force_cleared",
          "wait_timeout badge": "#events-body .event--wait_timeout",
          "timeline lane label": "#timeline-chart .tl-lane-label",
          "timeline axis label": "#timeline-chart .tl-axis-label",
        },
        borders: { "the owner filter": "#f-owner", "the lock filter": "#f-field", "Reset": "#f-reset" },
        sweepSel: "body",
      });
      // A bar's tooltip, and the table rows of a hold picked on the timeline.
      await page.focus('#timeline-chart .tl-hold[data-ending="released"]');
      await page.locator("#timeline-tip").waitFor({ state: "visible" });
      await measure("timeline tooltip", { named: { "tooltip text": "#timeline-tip dd", "tooltip label": "#timeline-tip dt" }, sweepSel: "#timeline-tip" });
      await page.keyboard.press("Enter");
      await page.locator("#events-body tr.is-highlight").first().waitFor();
      await measure("highlighted rows", { named: { "highlighted row": "#events-body tr.is-highlight td.num" }, sweepSel: "#events-table" });
      await page.done();
    }
    for (const [where, r] of Object.entries(results)) {
      console.log(`# contrast ${where}: ${Object.entries(r.named).map(([k, v]) => `${k} ${v}`).join(", ")}; edges ${Object.entries(r.borders).map(([k, v]) => `${k} ${v}`).join(", ") || "-"}; ${r.checked} texts swept, lowest ${r.lowest ? `${r.lowest.ratio} ("${r.lowest.text}")` : "-"}`);
    }
  }));
});

describe("demo mode (service with --demo)", () => {
  let svc;
  let demo = false;
  before(async () => {
    svc = await startService({ demo: true });
    demo = (await api(svc, "GET", "/demo/status")).status === 200;
    if (!demo) console.log("# demo tests skipped: GET /demo/status is 404 (this lockledger has no demo mode)");
  });
  after(async () => {
    await svc?.stop();
  });

  const demoTest = (name, fn) =>
    test(name, async (t) => {
      if (!demo) {
        t.skip("lockledger has no demo mode (GET /demo/status is 404)");
        return;
      }
      await fn(t);
    });

  demoTest("a streamed reply holds messages and message_operations; Stop releases them", async () => {
    const conv = "demo-code-review";
    const page = await newPage();
    await openChat(page, svc, conv);
    assert.equal(await page.getAttribute("body", "data-demo"), "on");
    assert.match(await page.textContent("#mode-note"), /Demo mode/);
    await page.fill("#composer-input", "please review");
    await page.keyboard.press("Enter"); // Enter in the message box sends
    await page.waitForFunction(() => /You said/.test(document.querySelector("#messages").textContent));
    assert.equal(await page.isDisabled("#stop-button"), false);
    assert.equal(await page.isDisabled("#send-button"), true);
    for (const f of ["messages", "message_operations"]) {
      const l = await lockOf(svc, conv, f);
      assert.equal(l.state, "held", f);
      assert.equal(l.kind, "lease", f);
    }
    // The modal sees them, while the reply keeps streaming behind it.
    await openLockStatus(page);
    assert.equal(await badge(page, "messages"), "HELD");
    assert.equal(await badge(page, "message_operations"), "HELD");
    assert.match(await lockItem(page, "messages").textContent(), /stream_reply/);
    await page.keyboard.press("Escape");
    await page.keyboard.press("Escape");
    const t0 = Date.now();
    await page.click("#stop-button");
    await eventually(async () => (await lockOf(svc, conv, "messages")).state === "free" && (await lockOf(svc, conv, "message_operations")).state === "free", "locks released after Stop", 3000);
    console.log(`# locks released ${Date.now() - t0} ms after Stop`);
    await page.waitForFunction(() => /stopped/.test(document.querySelector("#messages").textContent));
    assert.equal(await page.isDisabled("#send-button"), false);
    await page.done();
  });

  demoTest("closing the tab while a reply streams releases the locks", async () => {
    const conv = "demo-recipes";
    const page = await newPage();
    await openChat(page, svc, conv);
    await page.fill("#composer-input", "soup?");
    await page.click("#send-button");
    await page.waitForFunction(() => /You said/.test(document.querySelector("#messages").textContent));
    assert.equal((await lockOf(svc, conv, "messages")).state, "held");
    await page.close();
    await eventually(async () => (await lockOf(svc, conv, "messages")).state === "free", "locks released after closing the tab", 3000);
    assert.equal((await lockOf(svc, conv, "message_operations")).state, "free");
  });

  // Its own service: the crashed holder's lock is STALE only until the 5 s reconcile.
  demoTest("simulated crashed, hung and external holders show in the modal; End frees them", () => withService({ demo: true }, async (svc) => {
    const conv = "demo-trip-planning";
    try {
      await simulatedHolders(svc, conv);
    } finally {
      // The hung holder is a stopped process: always end it.
      await api(svc, "POST", "/demo/simulate", { body: { conversation_id: conv, kind: "end" } });
    }
  }));

  async function simulatedHolders(svc, conv) {
    const page = await newPage();
    await openChat(page, svc, conv);
    await page.click("#settings-open-button");
    assert.equal(await page.isVisible("#demo-tools"), true);
    for (const kind of ["crashed", "hung", "external"]) {
      await page.click(`[data-simulate="${kind}"]`);
      await page.waitForFunction(() => !/Working/.test(document.querySelector("#demo-tools-status").textContent));
      assert.doesNotMatch(await page.textContent("#demo-tools-status"), /Could not/);
    }
    await page.click(OPEN_BUTTON);
    await page.waitForSelector(`${MODAL}[open]`);
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    assert.equal(await badge(page, "memory"), "STALE");
    assert.match(await lockItem(page, "memory").textContent(), /holder_dead/);
    assert.equal(await badge(page, "all"), "HELD");
    assert.equal(await badge(page, "uploaded_documents_list"), "HELD");
    assert.match(await lockItem(page, "uploaded_documents_list").textContent(), /external/);
    assert.equal(await page.isVisible(`${MODAL} .ll-clear`), true);

    // Safe clear: the crashed one goes, the hung and the external ones are skipped.
    await page.click(`${MODAL} .ll-clear`);
    await page.click(`${MODAL} .ll-confirm-yes`);
    await page.locator(`${MODAL} .ll-result-cleared`).waitFor();
    svc.assertBeforeReconcile("the clear");
    await page.waitForFunction((m) => document.querySelector(m).getAttribute("aria-busy") === "false", MODAL);
    assert.match(await page.textContent(`${MODAL} .ll-result-cleared`), /demo-trip-planning_memory\.lock/);
    const skipped = await page.textContent(`${MODAL} .ll-result-skipped`);
    assert.match(skipped, /uploaded_documents_list/);
    assert.equal(await badge(page, "memory"), "CLEAR");
    assert.equal(await badge(page, "uploaded_documents_list"), "HELD");

    // Admin: external holders get no Force clear button.
    await page.click(`${MODAL} .ll-admin summary`);
    await page.fill(`${MODAL} .ll-admin input[type=password]`, svc.adminToken);
    await page.click(`${MODAL} .ll-admin-save`);
    await lockItem(page, "all").locator(".ll-force").waitFor();
    assert.equal(await lockItem(page, "uploaded_documents_list").locator(".ll-force").count(), 0);
    assert.match(await lockItem(page, "uploaded_documents_list").textContent(), /cannot be force-cleared/);

    await page.keyboard.press("Escape");
    await page.click('[data-simulate="end"]');
    await page.waitForFunction(() => /Ended/.test(document.querySelector("#demo-tools-status").textContent));
    await eventually(
      async () => (await lockOf(svc, conv, "all")).state !== "held" && (await lockOf(svc, conv, "uploaded_documents_list")).state === "free",
      "simulated holders ended",
      5000
    );
    await page.done();
  }
});
