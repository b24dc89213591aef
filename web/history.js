/* lockledger lock-history audit page: filtered, paginated events (GET /api/v1/history;
 * folded busy answers show their count, "wait_timeout ×37"), a timeline of the holds
 * matching the filters (drawn by timeline.js; clicking a hold filters the table to it), CSV
 * export of the current filters (fetched with the token header and saved as a Blob; the
 * "# rows: N" trailer tells a complete export from a cut one), and an admin SQL console
 * (POST /api/v1/sql). A service started with --token answers 401 without the user token:
 * the page then asks for it and keeps it in sessionStorage only.
 * Filters are read from and written to the page URL (?owner=&field=&event=&holder=&since=
 * &until=&limit=), so links such as /ui/history?owner=conv42 work. Every value from the
 * service is untrusted and set with textContent only. */
(function () {
  "use strict";

  var ADMIN_KEY = "lockledger.adminToken";
  var FILTERS = ["owner", "field", "event", "holder", "since", "until", "limit"];

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function readToken() {
    try {
      return window.sessionStorage.getItem(ADMIN_KEY) || "";
    } catch (e) {
      return memoryToken;
    }
  }
  var memoryToken = "";
  function storeToken(v) {
    memoryToken = v;
    try {
      if (v) window.sessionStorage.setItem(ADMIN_KEY, v);
      else window.sessionStorage.removeItem(ADMIN_KEY);
    } catch (e) {
      /* storage disabled: keep it in memory */
    }
  }

  function apiError(resp, text) {
    var data = null;
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = null;
    }
    var e = data && data.error;
    var err = new Error((e && e.message) || "The service answered " + resp.status + ".");
    err.code = (e && e.code) || "http_" + resp.status;
    err.status = resp.status;
    return err;
  }

  // ------------------------------------------------------------------ the user token
  // A service started with --token answers 401 without it. It is typed on this page when
  // needed and kept in sessionStorage only (the chat page's Lock Status modal reads it too).
  var USER_KEY = "lockledger.userToken";
  var memoryUserToken = "";

  function readUserToken() {
    try {
      return window.sessionStorage.getItem(USER_KEY) || "";
    } catch (e) {
      return memoryUserToken;
    }
  }

  function storeUserToken(v) {
    memoryUserToken = v;
    try {
      if (v) window.sessionStorage.setItem(USER_KEY, v);
      else window.sessionStorage.removeItem(USER_KEY);
    } catch (e) {
      /* storage disabled: keep it in memory */
    }
  }

  /** Headers for a call: the admin token for admin calls, else the user token if any. */
  function authHeaders(headers, admin) {
    if (admin) headers.Authorization = "Bearer " + readToken();
    else if (readUserToken()) headers["X-Lockledger-Token"] = readUserToken();
    return headers;
  }

  function request(method, path, body, admin) {
    var headers = authHeaders({ Accept: "application/json" }, admin);
    if (body !== undefined) headers["Content-Type"] = "application/json";
    var init = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) init.body = JSON.stringify(body);
    return fetch(path, init).then(
      function (resp) {
        return resp.text().then(function (text) {
          if (!resp.ok) {
            var err = apiError(resp, text);
            if (resp.status === 401 && !admin) needUserToken(err);
            throw err;
          }
          return text ? JSON.parse(text) : null;
        });
      },
      function (e) {
        var err = new Error("Cannot reach lockledger: " + e.message);
        err.code = "network";
        throw err;
      }
    );
  }

  function describe(err) {
    var s = err.message || String(err);
    if (err.code && err.code !== "network") s += " (" + err.code + (err.status ? ", " + err.status : "") + ")";
    return s;
  }

  // ------------------------------------------------------------------ time helpers
  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  /** A time given in the URL (RFC 3339 or epoch ms) as a datetime-local value. */
  function toLocalInput(v) {
    if (!v) return "";
    var d = /^\d+$/.test(v) ? new Date(Number(v)) : new Date(v);
    if (isNaN(d.getTime())) return "";
    return (
      d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
      "T" + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds())
    );
  }

  /** A datetime-local value as RFC 3339 UTC. */
  function fromLocalInput(v) {
    if (!v) return "";
    var d = new Date(v);
    return isNaN(d.getTime()) ? "" : d.toISOString();
  }

  function formatHeld(ms) {
    if (typeof ms !== "number") return "";
    if (ms < 1000) return ms + " ms";
    var s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // ------------------------------------------------------------------ tabs
  var tabs = [];

  function selectTab(tab, focus) {
    tabs.forEach(function (t) {
      var on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    });
    if (focus) tab.focus();
    var hash = tab.id === "tab-sql" ? "#sql" : "";
    if (window.location.hash !== hash) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search + hash);
    }
    if (tab.id === "tab-sql") updateTokenState();
  }

  function setupTabs() {
    tabs = [$("tab-events"), $("tab-sql")];
    tabs.forEach(function (t, i) {
      t.addEventListener("click", function () {
        selectTab(t, false);
      });
      t.addEventListener("keydown", function (ev) {
        var j = null;
        if (ev.key === "ArrowRight") j = (i + 1) % tabs.length;
        else if (ev.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
        else if (ev.key === "Home") j = 0;
        else if (ev.key === "End") j = tabs.length - 1;
        if (j !== null) {
          ev.preventDefault();
          selectTab(tabs[j], true);
        }
      });
    });
    selectTab(window.location.hash === "#sql" ? tabs[1] : tabs[0], false);
  }

  // ------------------------------------------------------------------ events
  var page = { cursors: [null], index: 0, next: null, seq: 0, highlight: null };
  var COLUMNS = ["#", "When", "Event", "Lock", "Holder", "Operation", "Token", "Actor", "Reason", "Held"];

  /** The current filters as API query parameters (empty ones left out). */
  function filterParams() {
    var p = new URLSearchParams();
    var owner = $("f-owner").value.trim();
    var holder = $("f-holder").value.trim();
    if (owner) p.set("owner", owner);
    if ($("f-field").value) p.set("field", $("f-field").value);
    if ($("f-event").value) p.set("event", $("f-event").value);
    if (holder) p.set("holder", holder);
    var since = fromLocalInput($("f-since").value);
    var until = fromLocalInput($("f-until").value);
    if (since) p.set("since", since);
    if (until) p.set("until", until);
    return p;
  }

  function ensureOption(select, value, label) {
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === value) {
        select.value = value;
        return;
      }
    }
    var o = document.createElement("option");
    o.value = value;
    o.textContent = label || value;
    select.appendChild(o);
    select.value = value;
  }

  function readUrl() {
    var q = new URLSearchParams(window.location.search);
    $("f-owner").value = q.get("owner") || "";
    var field = q.get("field");
    if (field === "" && q.has("field")) field = "main";
    if (field) ensureOption($("f-field"), field);
    else $("f-field").value = "";
    var event = q.get("event");
    if (event) ensureOption($("f-event"), event);
    else $("f-event").value = "";
    $("f-holder").value = q.get("holder") || "";
    $("f-since").value = toLocalInput(q.get("since"));
    $("f-until").value = toLocalInput(q.get("until"));
    var limit = q.get("limit");
    if (limit && /^\d+$/.test(limit)) ensureOption($("f-limit"), limit);
  }

  function writeUrl() {
    var p = filterParams();
    var limit = $("f-limit").value;
    if (limit && limit !== "50") p.set("limit", limit);
    var s = p.toString();
    window.history.replaceState(null, "", window.location.pathname + (s ? "?" + s : "") + window.location.hash);
  }

  /** A user call was refused for want of a token: show where to type it. */
  function needUserToken(err) {
    var form = $("user-token-form");
    var state = $("user-token-state");
    var had = !!readUserToken();
    form.hidden = false;
    state.hidden = false;
    state.textContent = had
      ? "The access token of this tab was refused (" + err.message + "). Type the right one."
      : "This lockledger needs an access token (its user token, given with --token). Type it to see the history.";
    $("user-token-forget").disabled = !had;
    var active = document.activeElement;
    if (!active || active === document.body) $("user-token").focus();
  }

  function setupUserToken() {
    var form = $("user-token-form");
    var state = $("user-token-state");
    var input = $("user-token");
    function shown() {
      var t = readUserToken();
      form.hidden = !t && form.hidden;
      $("user-token-forget").disabled = !t;
      if (t) {
        state.hidden = false;
        state.textContent = "Using the access token kept for this tab.";
      }
    }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var t = input.value.trim();
      if (!t) {
        state.hidden = false;
        state.textContent = "Type the token first.";
        input.focus();
        return;
      }
      storeUserToken(t);
      input.value = "";
      shown();
      state.textContent = "Token set for this tab; loading\u2026";
      applyFilters(true).then(function () {
        if ($("events-error").hidden) state.textContent = "Using the access token kept for this tab.";
      });
    });
    $("user-token-forget").addEventListener("click", function () {
      storeUserToken("");
      state.textContent = "Token forgotten.";
      $("user-token-forget").disabled = true;
      input.focus();
    });
    if (readUserToken()) form.hidden = false;
    shown();
  }

  // ------------------------------------------------------------------ CSV export
  // fetch (with the token header) and a Blob saved through an object URL: a bare link
  // would be refused (401) when the service needs a token. The service streams every
  // matching row and ends with "# rows: N", which tells a complete export from a cut one.
  var csv = { controller: null, lastShown: 0 };

  function kb(bytes) {
    return bytes < 1024 ? bytes + " bytes" : bytes < 1048576 ? (bytes / 1024).toFixed(1) + " KB" : (bytes / 1048576).toFixed(1) + " MB";
  }

  function csvFileName() {
    var owner = $("f-owner").value.trim().replace(/[^A-Za-z0-9@+_.-]/g, "_").slice(0, 80);
    var d = new Date();
    var stamp = d.getFullYear() + pad(d.getMonth() + 1) + pad(d.getDate()) + "-" + pad(d.getHours()) + pad(d.getMinutes()) + pad(d.getSeconds());
    return "lock-history" + (owner ? "-" + owner : "") + "-" + stamp + ".csv";
  }

  function saveBlob(blob, name) {
    var url = URL.createObjectURL(blob);
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    // The download has its own copy once it started.
    setTimeout(function () {
      URL.revokeObjectURL(url);
      a.remove();
    }, 30000);
  }

  function setCsvBusy(on) {
    $("csv-export").disabled = on;
    $("csv-export").setAttribute("aria-busy", on ? "true" : "false");
    $("csv-cancel").hidden = !on;
  }

  function exportCsv() {
    if (csv.controller) return;
    var status = $("csv-status");
    var p = filterParams();
    p.set("format", "csv");
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    csv.controller = controller || { abort: function () {} };
    var cancelled = false;
    csv.cancel = function () {
      cancelled = true;
      csv.controller.abort();
    };
    setCsvBusy(true);
    status.className = "muted csv-status";
    status.textContent = "Exporting the events that match these filters\u2026";
    var received = 0;
    var lines = 0;
    var tail = "";
    var decoder = new TextDecoder();
    var chunks = [];
    function progress(force) {
      var now = Date.now();
      if (!force && now - csv.lastShown < 400) return;
      csv.lastShown = now;
      status.textContent = "Exporting\u2026 " + Math.max(0, lines - 1) + " lines (" + kb(received) + ") so far.";
    }
    function take(value) {
      chunks.push(value);
      received += value.length;
      for (var i = 0; i < value.length; i++) if (value[i] === 10) lines += 1;
      tail = (tail + decoder.decode(value, { stream: true })).slice(-200);
      progress(false);
    }
    var init = { headers: authHeaders({ Accept: "text/csv" }, false), cache: "no-store" };
    if (controller) init.signal = controller.signal;
    fetch("/api/v1/history?" + p.toString(), init)
      .then(function (resp) {
        if (!resp.ok) {
          return resp.text().then(function (text) {
            var err = apiError(resp, text);
            if (resp.status === 401) needUserToken(err);
            throw err;
          });
        }
        if (!resp.body || !resp.body.getReader) {
          return resp.arrayBuffer().then(function (buf) {
            take(new Uint8Array(buf));
          });
        }
        var reader = resp.body.getReader();
        function pump() {
          return reader.read().then(function (r) {
            if (r.done) return null;
            take(r.value);
            return pump();
          });
        }
        return pump();
      })
      .then(function () {
        tail += decoder.decode();
        var m = /# rows: (\d+)\s*$/.exec(tail);
        if (!m) {
          var e = new Error("the export was cut off after " + kb(received) + " (it has no \u201c# rows\u201d line at its end); nothing was saved, try again");
          e.code = "incomplete";
          throw e;
        }
        var n = Number(m[1]);
        var name = csvFileName();
        saveBlob(new Blob(chunks, { type: "text/csv;charset=utf-8" }), name);
        status.className = "muted csv-status is-done";
        status.textContent = "Exported " + n + " row" + (n === 1 ? "" : "s") + " to " + name + " (" + kb(received) + ").";
      })
      .catch(function (err) {
        status.className = "error csv-status";
        if (cancelled) {
          status.className = "muted csv-status";
          status.textContent = "Export cancelled; nothing was saved.";
        } else {
          status.textContent = "Could not export: " + describe(err);
        }
      })
      .then(function () {
        csv.controller = null;
        setCsvBusy(false);
      });
  }

  function cell(row, text, className) {
    var td = el("td", className);
    td.setAttribute("data-label", COLUMNS[row.children.length] || "");
    if (text === null || text === undefined || text === "") {
      td.appendChild(el("span", "null", "\u2014"));
    } else if (typeof text === "object" && text.nodeType) {
      td.appendChild(text);
    } else {
      td.textContent = String(text);
    }
    row.appendChild(td);
    return td;
  }

  /** Is this event part of the hold or mark picked on the timeline? */
  function isHighlighted(e) {
    var h = page.highlight;
    if (!h) return false;
    if (h.eventId !== undefined) return e.event_id === h.eventId;
    return e.namespace === h.namespace && e.owner === h.owner && e.field === h.field && e.token === h.token;
  }

  /** The event's name; a folded row (busy answers) says how many it stands for. */
  function eventBadge(e) {
    var badge = el("span", "event event--" + String(e.event).replace(/[^a-z_]/g, ""), e.event);
    var n = typeof e.count === "number" ? e.count : 1;
    if (n > 1) {
      badge.appendChild(el("span", "event-count", " \u00d7" + n));
      badge.appendChild(el("span", "visually-hidden", " (" + n + " in this row)"));
      badge.title = n + " " + (e.event === "wait_timeout" ? "busy answers" : "events") + " folded into this row";
    }
    return badge;
  }

  function renderEvents(events) {
    var body = $("events-body");
    clear(body);
    if (!events.length) {
      var tr = el("tr");
      var td = el("td", "muted", "No events match these filters.");
      td.colSpan = 10;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    events.forEach(function (e) {
      var tr = el("tr");
      tr.setAttribute("data-event-id", String(e.event_id));
      cell(tr, e.event_id, "num");
      var at = new Date(e.at);
      var when = el("time", "when");
      when.dateTime = e.at;
      when.title = e.at;
      when.appendChild(el("span", "when-time", at.toLocaleTimeString()));
      when.appendChild(el("span", "when-date", at.toLocaleDateString()));
      cell(tr, when, "nowrap");
      cell(tr, eventBadge(e));
      var lock = el("td", "lock-cell");
      lock.setAttribute("data-label", COLUMNS[3]);
      var ownerLink = el("a", "owner", e.owner);
      ownerLink.href = "?owner=" + encodeURIComponent(e.owner);
      ownerLink.title = "Show only " + e.owner;
      lock.appendChild(ownerLink);
      lock.appendChild(el("span", "field", e.field === "" ? "(main)" : e.field));
      tr.appendChild(lock);
      var holder = el("td", "holder-cell");
      holder.setAttribute("data-label", COLUMNS[4]);
      holder.appendChild(e.holder ? el("span", "holder", e.holder) : el("span", "null", "\u2014"));
      var where = [e.pid !== null && e.pid !== undefined ? "pid " + e.pid : "", e.host ? "@ " + e.host : ""].filter(Boolean).join(" ");
      if (where) holder.appendChild(el("span", "where", where));
      tr.appendChild(holder);
      cell(tr, e.operation);
      cell(tr, e.token, "num");
      cell(tr, e.actor);
      cell(tr, e.reason);
      cell(tr, formatHeld(e.held_ms), "num");
      if (isHighlighted(e)) {
        tr.className = "is-highlight";
        tr.setAttribute("aria-current", "true");
      }
      body.appendChild(tr);
    });
  }

  function loadEvents() {
    var my = ++page.seq;
    var p = filterParams();
    p.set("limit", $("f-limit").value || "50");
    var cursor = page.cursors[page.index];
    if (cursor !== null && cursor !== undefined) p.set("cursor", String(cursor));
    $("events-status").textContent = "Loading\u2026";
    $("events-table").setAttribute("aria-busy", "true");
    $("page-newer").disabled = true;
    $("page-older").disabled = true;
    return request("GET", "/api/v1/history?" + p.toString())
      .then(function (data) {
        if (my !== page.seq) return;
        $("events-error").hidden = true;
        var events = (data && data.events) || [];
        page.next = data ? data.next_cursor : null;
        renderEvents(events);
        var first = page.index + 1;
        $("page-label").textContent = "Page " + first;
        var n = events.length;
        var summary = n ? n + " event" + (n === 1 ? "" : "s") + " on page " + first : "No events";
        if (n) summary += ", from #" + events[0].event_id + " to #" + events[n - 1].event_id;
        summary += ".";
        if (page.highlight) {
          var marked = events.filter(isHighlighted).length;
          summary += " " + marked + " of them belong" + (marked === 1 ? "s" : "") + " to the " + (page.highlight.eventId !== undefined ? "mark" : "hold") + " picked on the timeline (highlighted).";
        }
        $("events-status").textContent = summary;
      })
      .catch(function (err) {
        if (my !== page.seq) return;
        page.next = null;
        clear($("events-body"));
        $("events-status").textContent = "";
        $("events-error").textContent = "Could not load the history: " + describe(err);
        $("events-error").hidden = false;
      })
      .then(function () {
        if (my !== page.seq) return;
        $("events-table").setAttribute("aria-busy", "false");
        $("page-newer").disabled = page.index === 0;
        $("page-older").disabled = page.next === null || page.next === undefined;
      });
  }

  /** keepHighlight: the filters were set from a timeline item, whose rows stay marked. */
  function applyFilters(keepHighlight) {
    page.cursors = [null];
    page.index = 0;
    if (keepHighlight !== true) page.highlight = null;
    writeUrl();
    loadTimeline();
    return loadEvents();
  }

  // ------------------------------------------------------------------ timeline
  var timeline = null;
  var tl = { seq: 0, focusKey: null };

  /** Time filter values as epoch ms (null when not set). */
  function filterTime(id) {
    var v = fromLocalInput($(id).value);
    return v ? Date.parse(v) : null;
  }

  /** Up to 1000 newest events matching the filters (any kind), and the locks held now. */
  function loadTimeline() {
    if (!timeline) return Promise.resolve();
    var my = ++tl.seq;
    var p = filterParams();
    var eventFilter = p.get("event");
    p.delete("event");
    p.set("limit", "1000");
    var owner = $("f-owner").value.trim();
    var liveQuery = function (state) {
      var q = new URLSearchParams({ state: state, limit: "1000" });
      if (owner) q.set("owner_prefix", owner);
      return request("GET", "/api/v1/locks?" + q.toString()).then(function (data) {
        return ((data && data.locks) || []).filter(function (l) {
          return !owner || l.owner === owner;
        });
      });
    };
    var liveError = null;
    var live = Promise.all([liveQuery("held"), liveQuery("stale")])
      .then(function (lists) {
        return lists[0].concat(lists[1]);
      })
      .catch(function (err) {
        liveError = describe(err);
        return [];
      });
    timeline.loading();
    return Promise.all([request("GET", "/api/v1/history?" + p.toString()), live])
      .then(function (res) {
        if (my !== tl.seq) return;
        var events = (res[0] && res[0].events) || [];
        timeline.show(events, res[1], {
          perField: !!owner,
          since: filterTime("f-since"),
          until: filterTime("f-until"),
          now: Date.now(),
          truncated: res[0] && res[0].next_cursor !== null && res[0].next_cursor !== undefined,
          eventFilter: eventFilter,
          liveError: liveError
        });
        if (tl.focusKey) {
          timeline.focusItem(tl.focusKey);
          tl.focusKey = null;
        }
      })
      .catch(function (err) {
        if (my !== tl.seq) return;
        timeline.error(describe(err));
      });
  }

  /** A hold or mark picked on the timeline: filter the table to its lock and time. */
  function selectItem(item) {
    var from = item.type === "hold" ? item.start : item.at;
    var to = item.type === "hold" ? (item.ending === "held" || item.ending === "open" || item.stillHeld ? null : item.end) : item.at;
    // The inputs hold whole seconds and `until` is exclusive: round outwards.
    var since = Math.floor(from / 1000) * 1000;
    $("f-owner").value = item.owner;
    ensureOption($("f-field"), item.field === "" ? "main" : item.field);
    $("f-event").value = "";
    $("f-since").value = toLocalInput(String(since));
    $("f-until").value = to === null ? "" : toLocalInput(String(Math.floor(to / 1000) * 1000 + 1000));
    page.highlight =
      item.type === "hold"
        ? { namespace: item.namespace, owner: item.owner, field: item.field, token: item.token }
        : { eventId: item.eventId };
    tl.focusKey = item.key;
    applyFilters(true);
  }

  function setupEvents() {
    readUrl();
    $("csv-export").addEventListener("click", exportCsv);
    $("csv-cancel").addEventListener("click", function () {
      if (csv.cancel) csv.cancel();
    });
    $("filters").addEventListener("submit", function (ev) {
      ev.preventDefault();
      applyFilters();
    });
    $("f-reset").addEventListener("click", function () {
      $("filters").reset();
      $("f-limit").value = "50";
      applyFilters();
    });
    ["f-field", "f-event", "f-limit"].forEach(function (id) {
      $(id).addEventListener("change", applyFilters);
    });
    $("page-older").addEventListener("click", function () {
      if (page.next === null || page.next === undefined) return;
      page.cursors = page.cursors.slice(0, page.index + 1);
      page.cursors.push(page.next);
      page.index += 1;
      loadEvents().then(function () {
        if ($("page-older").disabled) $("page-newer").focus();
      });
    });
    $("page-newer").addEventListener("click", function () {
      if (page.index === 0) return;
      page.index -= 1;
      loadEvents().then(function () {
        if ($("page-newer").disabled) $("page-older").focus();
      });
    });
    loadTimeline();
    loadEvents();
  }

  // ------------------------------------------------------------------ SQL
  function updateTokenState() {
    var t = readToken();
    $("sql-token-state").textContent = t
      ? "Admin token set for this tab."
      : "Enter the admin token (the service writes it to <storage>/admin-token).";
    $("sql-token-forget").disabled = !t;
  }

  function renderSqlResult(result) {
    var table = $("sql-table");
    var thead = table.tHead;
    var tbody = table.tBodies[0];
    clear(thead);
    clear(tbody);
    var columns = (result && result.columns) || [];
    var rows = (result && result.rows) || [];
    var hr = el("tr");
    columns.forEach(function (c) {
      var th = el("th", null, c);
      th.scope = "col";
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    rows.forEach(function (r) {
      var tr = el("tr");
      (Array.isArray(r) ? r : [r]).forEach(function (v) {
        var td = el("td");
        if (v === null || v === undefined) td.appendChild(el("span", "null", "NULL"));
        else if (typeof v === "object") td.textContent = JSON.stringify(v);
        else {
          td.textContent = String(v);
          if (typeof v === "number") td.className = "num";
        }
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    $("sql-result-wrap").hidden = false;
  }

  function runSql() {
    var sql = $("sql-input").value.trim();
    var status = $("sql-status");
    var error = $("sql-error");
    error.hidden = true;
    if (!sql) {
      error.textContent = "Type a query first.";
      error.hidden = false;
      return;
    }
    if (!readToken()) {
      error.textContent = "The SQL console needs the admin token.";
      error.hidden = false;
      $("sql-token").focus();
      return;
    }
    var started = performance.now();
    status.textContent = "Running\u2026";
    $("sql-run").disabled = true;
    request("POST", "/api/v1/sql", { sql: sql }, true)
      .then(function (result) {
        renderSqlResult(result);
        var n = (result.rows || []).length;
        var ms = Math.round(performance.now() - started);
        var text = n + " row" + (n === 1 ? "" : "s") + " in " + ms + " ms.";
        if (result.truncated) text += " Truncated: only the first " + n + " rows are shown; narrow the query or add a LIMIT.";
        status.textContent = text;
      })
      .catch(function (err) {
        status.textContent = "";
        $("sql-result-wrap").hidden = true;
        var prefix = err.status === 401 || (err.status === 403 && err.code !== "read_only") ? "Not allowed: " : "";
        error.textContent = prefix + describe(err);
        error.hidden = false;
      })
      .then(function () {
        $("sql-run").disabled = false;
      });
  }

  function setupSql() {
    var input = $("sql-token");
    input.value = readToken();
    input.addEventListener("input", function () {
      storeToken(input.value.trim());
      updateTokenState();
    });
    $("sql-token-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      storeToken(input.value.trim());
      updateTokenState();
      $("sql-input").focus();
    });
    $("sql-token-forget").addEventListener("click", function () {
      storeToken("");
      input.value = "";
      updateTokenState();
      input.focus();
    });
    $("sql-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      runSql();
    });
    $("sql-input").addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        runSql();
      }
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-sql]"), function (b) {
      b.addEventListener("click", function () {
        $("sql-input").value = b.getAttribute("data-sql");
        $("sql-input").focus();
      });
    });
    updateTokenState();
  }

  function init() {
    if (window.LockTimeline) {
      timeline = window.LockTimeline.create(
        {
          section: $("timeline"),
          chart: $("timeline-chart"),
          legend: $("timeline-legend"),
          status: $("timeline-status"),
          notes: $("timeline-notes"),
          tables: $("timeline-tables")
        },
        { onSelect: selectItem }
      );
    }
    setupUserToken();
    setupSql();
    setupTabs();
    setupEvents();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
