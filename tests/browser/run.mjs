// Browser tests of the lockledger web UI: real Chromium, real lockledger processes.
//
//   cargo build                                   # the runner builds nothing itself
//   cd tests/browser && npm ci && node run.mjs    # or: npm test
//
// Environment:
//   LOCKLEDGER_BIN      the lockledger binary (default: ../../target/debug/lockledger relative
//                       to this file)
//   CHROMIUM            the browser (default /usr/bin/chromium; Debian: apt-get install chromium)
//   LL_SCREENSHOT_DIR   where the screenshot of the open Lock Status modal goes (default /tmp)
//
// Each run starts `lockledger serve --bind 127.0.0.1:0` on a temporary storage directory (and a
// second one with `--demo` for the demo tests; those are skipped, saying so, when the binary has
// no demo mode, i.e. GET /demo/status is 404). Locks are held by real child processes
// (`lockledger hold`), killed with real signals, or by leases taken over the HTTP API. Uses only
// node's built-in test runner and playwright-core driving the system Chromium; about 20 s.
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
// chat page without --demo; and in demo mode: a streamed reply holds messages and
// message_operations, Stop or closing the tab releases them, simulated holders show correctly.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
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

async function startService({ demo = false } = {}) {
  const startedAt = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockledger-ui-"));
  const args = ["--storage", dir, "serve", "--bind", "127.0.0.1:0"];
  if (demo) args.push("--demo");
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
    assert.deepEqual(fields, ["", "all", "message_operations", "memory", "messages", "uploaded_documents_list"]);
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

    // The library holder is asked to let go; `hold` sees it on its next renewal and exits 5.
    await lockItem(page, "memory").locator(".ll-force").click();
    const panel2 = lockItem(page, "memory").locator(".ll-force-panel");
    await panel2.locator(".ll-force-confirm").fill("FORCE");
    await panel2.locator(".ll-force-reason").fill("memory writer hung");
    await panel2.locator(".ll-force-go").click();
    await result.locator(".ll-result-cleared").waitFor();
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
    assert.ok((await page.locator(`${MODAL} .ll-result-skipped`).textContent()).includes(XSS));
    assert.equal(await page.locator("img").count(), 0);

    // The history page and the SQL console show it as text as well.
    await page.goto(`${svc.url}/ui/history?owner=${conv}`);
    await page.locator("#events-body tr[data-event-id]").first().waitFor();
    assert.ok((await page.locator("#events-body").textContent()).includes(XSS));
    assert.equal(await page.locator("img").count(), 0);
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

    // CSV export of the current filters downloads text with the CSV header.
    const csvHref = await page.getAttribute("#csv-link", "href");
    assert.match(csvHref, /format=csv/);
    assert.match(csvHref, /holder=alice/);
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv-link")]);
    const csv = fs.readFileSync(await download.path(), "utf8");
    assert.ok(csv.startsWith("event_id,at,"), csv.slice(0, 80));
    const lines = csv.trim().split("\n");
    assert.equal(lines.length, 1 + 3, "header plus the 3 filtered events");
    assert.ok(lines.slice(1).every((l) => l.includes(",t-hist,messages,released,")), csv);

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
