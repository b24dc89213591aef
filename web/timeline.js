/* lockledger lock-history timeline: an inline SVG (built with DOM calls, no library) of the
 * holds in the events that match the history page's filters.
 *
 * One lane per lock of the selected owner, or per owner on the global view; the busiest
 * lanes first, at most MAX_LANES. A hold is a bar from its `acquired` event to the event
 * that ended it, matched by namespace + owner + field + token, coloured and patterned by
 * how it ended; a hold with no closing event that the current status still shows is "still
 * held" and reaches to now; a force-cleared hold whose holder still holds the file lock
 * (the status shows its grant, revoke_requested) says so and reaches to now too.
 * `wait_timeout` and `observed_external` events are marks (with their count when folded). Every
 * bar and mark is a focusable button whose details show in a tooltip on hover and focus;
 * Enter or a click hands the item to the page (which filters the events table to it). The
 * same holds are listed in a table for screen readers. Every value from the service is
 * untrusted and set with textContent or setAttribute only.
 *
 * Used by history.js: LockTimeline.create(elements, {onSelect}) then .show(events, live, opts). */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var MAX_LANES = 12;
  var NARROW_PX = 560;

  /** How a hold can end: CSS class suffix, legend label, the pattern that repeats the colour. */
  var ENDINGS = [
    { key: "released", label: "Released", cue: "solid", help: "the holder let go" },
    { key: "expired", label: "Expired", cue: "diagonal stripes", help: "its lease ran out" },
    { key: "cleared", label: "Cleared", cue: "vertical stripes", help: "a safe clear removed it after its holder died" },
    { key: "force_cleared", label: "Force cleared", cue: "cross-hatched", help: "an admin revoked it" },
    { key: "reconciled", label: "Reconciled", cue: "horizontal stripes", help: "the service found its holder gone" },
    { key: "held", label: "Still held", cue: "solid, arrow at the end", help: "the current status still shows it" },
    { key: "open", label: "End not loaded", cue: "dashed outline", help: "no closing event in the loaded range" }
  ];
  var ENDING = {};
  ENDINGS.forEach(function (e) {
    ENDING[e.key] = e;
  });
  var CLOSERS = { released: true, expired: true, cleared: true, force_cleared: true, reconciled: true };
  var MARKS = {
    wait_timeout: { label: "Busy answer or wait timed out", short: "Busy / wait", cue: "diamond" },
    observed_external: { label: "Held outside lockledger", short: "External holder", cue: "triangle" }
  };

  // ------------------------------------------------------------------ small helpers
  function svg(tag, attrs, parent) {
    var node = document.createElementNS(SVG_NS, tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, String(attrs[k]));
      });
    }
    if (parent) parent.appendChild(node);
    return node;
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

  function fieldLabel(field) {
    return field === "" ? "(main)" : field;
  }

  function pad(n, w) {
    var s = String(n);
    while (s.length < (w || 2)) s = "0" + s;
    return s;
  }

  function clockTime(ms, withMs) {
    var d = new Date(ms);
    var s = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (withMs) s += "." + pad(d.getMilliseconds(), 3);
    return s;
  }

  function dateLabel(ms) {
    return new Date(ms).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  function fullTime(ms) {
    return dateLabel(ms) + " " + clockTime(ms, true);
  }

  function sameDay(a, b) {
    var x = new Date(a);
    var y = new Date(b);
    return x.getFullYear() === y.getFullYear() && x.getMonth() === y.getMonth() && x.getDate() === y.getDate();
  }

  function formatDuration(ms) {
    if (typeof ms !== "number" || isNaN(ms)) return "";
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + " ms";
    var s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  // ------------------------------------------------------------------ the model
  /**
   * Holds, marks and lanes from history events (any order) and the locks the status shows
   * as held or stale now. opts: {perField, since, until, now} (times in epoch ms or null).
   */
  function buildModel(events, live, opts) {
    var now = opts.now;
    var sorted = events.slice().sort(function (a, b) {
      return a.event_id - b.event_id;
    });
    var open = {};
    var holds = [];
    var marks = [];
    var liveByKey = {};
    (live || []).forEach(function (l) {
      if (l.token !== null && l.token !== undefined) {
        liveByKey[[l.namespace, l.owner, l.field, l.token].join("\u0000")] = l;
      }
    });

    function newHold(e, start) {
      return {
        type: "hold",
        namespace: e.namespace,
        owner: e.owner,
        field: e.field,
        token: e.token,
        holder: e.holder,
        operation: e.operation,
        pid: e.pid,
        host: e.host,
        start: start,
        startKnown: true,
        end: null,
        ending: null,
        renewals: 0,
        eventIds: [e.event_id]
      };
    }

    sorted.forEach(function (e) {
      var t = Date.parse(e.at);
      if (isNaN(t)) return;
      var k = [e.namespace, e.owner, e.field, e.token].join("\u0000");
      var h;
      if (e.event === "acquired") {
        h = newHold(e, t);
        open[k] = h;
        holds.push(h);
      } else if (CLOSERS[e.event]) {
        h = open[k];
        if (h) {
          delete open[k];
          h.eventIds.push(e.event_id);
        } else {
          // Its acquired event is older than the loaded events: held_ms tells the start.
          h = newHold(e, typeof e.held_ms === "number" ? t - e.held_ms : t);
          h.startKnown = false;
          holds.push(h);
        }
        h.end = t;
        h.ending = e.event;
        h.actor = e.actor;
        h.reason = e.reason;
        if (typeof e.held_ms === "number") h.heldMs = e.held_ms;
        ["holder", "operation", "pid", "host"].forEach(function (f) {
          if (h[f] === null || h[f] === undefined) h[f] = e[f];
        });
      } else if (e.event === "renewed") {
        if (open[k]) {
          open[k].renewals += 1;
          open[k].eventIds.push(e.event_id);
        }
      } else if (MARKS[e.event]) {
        marks.push({
          type: "mark",
          kind: e.event,
          namespace: e.namespace,
          owner: e.owner,
          field: e.field,
          at: t,
          token: e.token,
          holder: e.holder,
          operation: e.operation,
          pid: e.pid,
          host: e.host,
          actor: e.actor,
          reason: e.reason,
          count: typeof e.count === "number" && e.count > 1 ? e.count : 1,
          eventId: e.event_id
        });
      }
    });

    var limit = opts.until !== null && opts.until !== undefined ? Math.min(opts.until, now) : now;
    var anyHeld = false;
    holds.forEach(function (h) {
      if (h.ending === "force_cleared") {
        // Revoked, but a holder that keeps its kernel lock still holds the file: the
        // status still shows its grant, asked to let go. The bar goes on to now.
        var r = liveByKey[[h.namespace, h.owner, h.field, h.token].join("\u0000")];
        if (r && r.revoke_requested) {
          h.stillHeld = true;
          h.stillHeldBy = r.pid;
          h.revokedAt = h.end;
          h.end = Math.max(limit, h.end);
          anyHeld = true;
        }
        return;
      }
      if (h.ending) return;
      var l = liveByKey[[h.namespace, h.owner, h.field, h.token].join("\u0000")];
      if (l) {
        h.ending = "held";
        h.stale = l.state === "stale";
        h.staleReason = l.stale_reason;
        h.end = Math.max(limit, h.start);
        anyHeld = true;
      } else {
        h.ending = "open";
      }
    });

    // The time span: the filter's since/until when given, else what was loaded.
    var lo = Infinity;
    var hi = -Infinity;
    holds.forEach(function (h) {
      lo = Math.min(lo, h.start);
      hi = Math.max(hi, h.end === null ? h.start : h.end);
    });
    marks.forEach(function (m) {
      lo = Math.min(lo, m.at);
      hi = Math.max(hi, m.at);
    });
    if (anyHeld) hi = Math.max(hi, limit);
    var fixedStart = opts.since !== null && opts.since !== undefined;
    var fixedEnd = opts.until !== null && opts.until !== undefined;
    if (!isFinite(lo)) {
      lo = fixedStart ? opts.since : now - 3600000;
      hi = fixedEnd ? opts.until : now;
    }
    var span = Math.max(hi - lo, 1000);
    var margin = Math.max(span * 0.04, 150);
    var start = fixedStart ? opts.since : lo - margin;
    var end = fixedEnd ? opts.until : hi + margin;
    if (!(end > start)) end = start + 1000;

    holds.forEach(function (h) {
      if (h.end === null) h.end = end; // "open": drawn to the edge of the view
      h.cutStart = h.start < start;
      h.cutEnd = h.end > end || h.ending === "open";
      h.key = ["hold", h.namespace, h.owner, h.field, h.token, h.start].join("|");
    });
    marks.forEach(function (m) {
      m.key = ["mark", m.eventId].join("|");
    });

    // Lanes: per lock of the owner, or per owner.
    var namespaces = {};
    holds.concat(marks).forEach(function (x) {
      namespaces[x.namespace] = true;
    });
    var manyNs = Object.keys(namespaces).length > 1;
    var lanes = {};
    function laneOf(x) {
      var id = opts.perField ? [x.namespace, x.owner, x.field].join("|") : [x.namespace, x.owner].join("|");
      if (!lanes[id]) {
        var name = opts.perField ? fieldLabel(x.field) : x.owner;
        lanes[id] = {
          id: id,
          label: (manyNs ? x.namespace + ": " : "") + name,
          title: (manyNs ? "namespace " + x.namespace + ", " : "") + (opts.perField ? x.owner + " / " + fieldLabel(x.field) : "owner " + x.owner),
          owner: x.owner,
          field: opts.perField ? x.field : null,
          holds: [],
          marks: []
        };
      }
      return lanes[id];
    }
    holds.forEach(function (h) {
      laneOf(h).holds.push(h);
    });
    marks.forEach(function (m) {
      laneOf(m).marks.push(m);
    });
    var all = Object.keys(lanes).map(function (k) {
      return lanes[k];
    });
    all.sort(function (a, b) {
      var d = b.holds.length + b.marks.length - (a.holds.length + a.marks.length);
      return d || (a.label < b.label ? -1 : a.label > b.label ? 1 : 0);
    });
    var shown = all.slice(0, MAX_LANES);
    return {
      start: start,
      end: end,
      now: now,
      perField: !!opts.perField,
      lanes: shown,
      omitted: all.slice(MAX_LANES),
      holdCount: holds.length,
      markCount: marks.length,
      shownHolds: shown.reduce(function (n, l) {
        return n + l.holds.length;
      }, 0),
      shownMarks: shown.reduce(function (n, l) {
        return n + l.marks.length;
      }, 0)
    };
  }

  // ------------------------------------------------------------------ time axis
  var SECOND = 1000;
  var MINUTE = 60 * SECOND;
  var HOUR = 60 * MINUTE;
  var DAY = 24 * HOUR;
  var STEPS = [
    100, 200, 500,
    SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND,
    MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
    HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR,
    DAY, 2 * DAY, 7 * DAY, 14 * DAY
  ];

  /** Tick times (local time, round values) for a span drawn `px` wide. */
  function ticks(start, end, px) {
    var maxTicks = Math.max(2, Math.floor(px / 78));
    var span = end - start;
    var step = null;
    for (var i = 0; i < STEPS.length; i++) {
      if (span / STEPS[i] <= maxTicks) {
        step = STEPS[i];
        break;
      }
    }
    var out = [];
    if (step === null) {
      // Months: the first of the month, every 1, 3, 6 or 12 months.
      var months = [1, 3, 6, 12, 24, 60].filter(function (m) {
        return span / (m * 30 * DAY) <= maxTicks;
      })[0] || 120;
      var d = new Date(start);
      d = new Date(d.getFullYear(), d.getMonth() + 1, 1);
      while (d.getMonth() % Math.min(months, 12) !== 0) d = new Date(d.getFullYear(), d.getMonth() + 1, 1);
      for (; d.getTime() <= end && out.length < 200; d = new Date(d.getFullYear(), d.getMonth() + months, 1)) out.push(d.getTime());
      return { step: 30 * DAY * months, times: out };
    }
    if (step >= DAY) {
      var days = step / DAY;
      var day = new Date(start);
      day = new Date(day.getFullYear(), day.getMonth(), day.getDate() + 1);
      for (; day.getTime() <= end && out.length < 200; day = new Date(day.getFullYear(), day.getMonth(), day.getDate() + days)) {
        out.push(day.getTime());
      }
      return { step: step, times: out };
    }
    // Below a day: round in local time (the offset of the span's start).
    var offset = -new Date(start).getTimezoneOffset() * MINUTE;
    var t = Math.ceil((start + offset) / step) * step - offset;
    for (; t <= end && out.length < 200; t += step) out.push(t);
    return { step: step, times: out };
  }

  function tickLabel(t, step) {
    var d = new Date(t);
    if (step >= 30 * DAY) return d.toLocaleDateString(undefined, { year: "numeric", month: "short" });
    if (step >= DAY) return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
    if (step >= MINUTE) return pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (step >= SECOND) return clockTime(t, false);
    return clockTime(t, false) + "." + String(Math.floor(d.getMilliseconds() / 100));
  }

  // ------------------------------------------------------------------ text for an item
  function stillHeldWords(h) {
    var who = h.stillHeldBy !== null && h.stillHeldBy !== undefined ? "process " + h.stillHeldBy : "its holder";
    return "revoked, but " + who + " still holds the file lock; its writes are refused (fenced); the lock frees when that process lets go or ends";
  }

  function markLabel(m) {
    return MARKS[m.kind].label + (m.count > 1 ? " \u00d7" + m.count : "");
  }

  function endingText(h) {
    var e = ENDING[h.ending];
    if (h.stillHeld) return e.label + " \u2014 " + stillHeldWords(h) + " (" + e.cue + ", arrow at the end)";
    var s = e.label;
    if (h.ending === "held" && h.stale) s += ", but STALE" + (h.staleReason ? " (" + h.staleReason + ")" : "");
    return s + " \u2014 " + e.help + " (" + e.cue + ")";
  }

  /** [label, value] rows describing a hold or a mark. */
  function details(item) {
    var rows = [];
    rows.push(["Lock", item.owner + " / " + fieldLabel(item.field)]);
    if (item.type === "hold") {
      rows.push(["Holder", item.holder || "\u2014"]);
      rows.push(["Operation", item.operation || "\u2014"]);
      rows.push(["PID", pidText(item)]);
      rows.push(["Token", item.token === null || item.token === undefined ? "\u2014" : String(item.token)]);
      rows.push(["Acquired", fullTime(item.start) + (item.startKnown ? "" : " (from the held time; before the loaded events)")]);
      if (item.stillHeld) rows.push(["Revoked", fullTime(item.revokedAt) + "; not ended yet: still held"]);
      else if (item.ending === "held") rows.push(["Ended", "not yet: still held"]);
      else if (item.ending === "open") rows.push(["Ended", "not in the loaded events"]);
      else rows.push(["Ended", fullTime(item.end)]);
      var held = item.ending === "open" ? "at least " + formatDuration(item.end - item.start) : formatDuration(typeof item.heldMs === "number" ? item.heldMs : item.end - item.start);
      if (item.stillHeld) held = formatDuration(item.end - item.start);
      rows.push(["Held for", held + (item.ending === "held" || item.stillHeld ? " so far" : "")]);
      rows.push(["How it ended", endingText(item)]);
      if (item.actor) rows.push(["By", item.actor]);
      if (item.reason) rows.push(["Reason", item.reason]);
      if (item.renewals) rows.push(["Renewed", item.renewals + " time" + (item.renewals === 1 ? "" : "s")]);
    } else {
      rows.push(["When", fullTime(item.at)]);
      rows.push([item.kind === "wait_timeout" ? "Asked by" : "Holder", item.holder || "\u2014"]);
      rows.push(["Operation", item.operation || "\u2014"]);
      rows.push(["PID", pidText(item)]);
      if (item.token !== null && item.token !== undefined) rows.push(["Token", String(item.token)]);
      if (item.count > 1) {
        rows.push(["Count", "\u00d7" + item.count + " (" + item.count + (item.kind === "wait_timeout" ? " busy answers" : " events") + " folded into one row)"]);
      }
      if (item.reason) rows.push(["Reason", item.reason]);
      rows.push(["Mark", markLabel(item) + " (" + MARKS[item.kind].cue + ")"]);
    }
    return rows;
  }

  function pidText(item) {
    var pid = item.pid === null || item.pid === undefined ? "" : String(item.pid);
    if (item.host) pid += (pid ? " @ " : "@ ") + item.host;
    return pid || "\u2014";
  }

  function titleOf(item) {
    if (item.type === "hold") {
      return fieldLabel(item.field) + " held by " + (item.holder || "unknown holder") + ": " + ENDING[item.ending].label.toLowerCase() +
        (item.stillHeld ? ", still held" : "");
    }
    return markLabel(item) + " on " + fieldLabel(item.field);
  }

  function accessibleName(item) {
    var parts = [item.type === "hold" ? "Hold" : markLabel(item)];
    details(item).forEach(function (r) {
      parts.push(r[0] + ": " + r[1]);
    });
    return parts.join(". ") + ". Enter shows its events in the table.";
  }

  // ------------------------------------------------------------------ patterns and legend
  /** An SVG with the patterns that repeat each ending's colour as a texture. */
  function buildDefs() {
    var root = svg("svg", { class: "tl-defs", "aria-hidden": "true", focusable: "false", width: 0, height: 0 });
    var defs = svg("defs", null, root);
    function pattern(key, size, rotate, draw) {
      var p = svg("pattern", { id: "tl-pat-" + key, patternUnits: "userSpaceOnUse", width: size, height: size }, defs);
      if (rotate) p.setAttribute("patternTransform", "rotate(" + rotate + ")");
      svg("rect", { class: "tl-c-" + key, x: 0, y: 0, width: size, height: size }, p);
      draw(p, size);
    }
    function vline(p, size) {
      svg("line", { class: "tl-stripe", x1: size / 2, y1: 0, x2: size / 2, y2: size }, p);
    }
    function hline(p, size) {
      svg("line", { class: "tl-stripe", x1: 0, y1: size / 2, x2: size, y2: size / 2 }, p);
    }
    pattern("released", 6, 0, function () {});
    pattern("expired", 6, 45, vline);
    pattern("cleared", 6, 0, vline);
    pattern("force_cleared", 6, 45, function (p, s) {
      vline(p, s);
      hline(p, s);
    });
    pattern("reconciled", 6, 0, hline);
    pattern("held", 6, 0, function () {});
    pattern("open", 6, 0, function () {});
    return root;
  }

  function fillOf(ending) {
    return "url(#tl-pat-" + ending + ")";
  }

  function markShape(kind, cx, cy, r, parent) {
    var pts = kind === "wait_timeout"
      ? [[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]]
      : [[cx, cy - r], [cx + r, cy + r * 0.8], [cx - r, cy + r * 0.8]];
    return svg("polygon", {
      class: "tl-mark-shape",
      points: pts.map(function (p) {
        return p[0].toFixed(1) + "," + p[1].toFixed(1);
      }).join(" ")
    }, parent);
  }

  function swatch(ending) {
    var s = svg("svg", { class: "tl-swatch", width: 30, height: 14, viewBox: "0 0 30 14", "aria-hidden": "true", focusable: "false" });
    var g = svg("g", { class: "tl-end--" + ending }, s);
    svg("rect", { class: "tl-bar", x: 0.75, y: 1.75, width: ending === "held" ? 22 : 28.5, height: 10.5, rx: 2, fill: fillOf(ending) }, g);
    if (ending === "held") svg("polygon", { class: "tl-arrow", points: "22,0 29.5,7 22,14" }, g);
    return s;
  }

  function markSwatch(kind) {
    var s = svg("svg", { class: "tl-swatch", width: 16, height: 16, viewBox: "0 0 16 16", "aria-hidden": "true", focusable: "false" });
    var g = svg("g", { class: "tl-kind--" + kind }, s);
    markShape(kind, 8, 8, 6, g);
    return s;
  }

  function buildLegend(ul) {
    clear(ul);
    ENDINGS.forEach(function (e) {
      var li = el("li");
      li.setAttribute("data-ending", e.key);
      li.appendChild(swatch(e.key));
      li.appendChild(el("span", null, e.label));
      li.appendChild(el("span", "tl-cue", "(" + e.cue + ")"));
      ul.appendChild(li);
    });
    Object.keys(MARKS).forEach(function (k) {
      var li = el("li");
      li.setAttribute("data-kind", k);
      li.appendChild(markSwatch(k));
      li.appendChild(el("span", null, MARKS[k].label));
      li.appendChild(el("span", "tl-cue", "(" + MARKS[k].cue + ")"));
      ul.appendChild(li);
    });
  }

  // ------------------------------------------------------------------ drawing
  /** Shortens an SVG text node with an ellipsis until it fits maxWidth pixels. */
  function fitText(node, full, maxWidth) {
    node.textContent = full;
    if (maxWidth <= 0 || node.getComputedTextLength() <= maxWidth) return;
    var lo = 0;
    var hi = full.length;
    while (lo < hi) {
      var mid = Math.ceil((lo + hi) / 2);
      node.textContent = full.slice(0, mid) + "\u2026";
      if (node.getComputedTextLength() <= maxWidth) lo = mid;
      else hi = mid - 1;
    }
    node.textContent = full.slice(0, lo) + "\u2026";
  }

  /** Puts intervals [a, b] into as few rows as possible without overlap; returns the row count. */
  function pack(items, extent) {
    var rowEnds = [];
    items
      .slice()
      .sort(function (a, b) {
        return extent(a)[0] - extent(b)[0];
      })
      .forEach(function (it) {
        var e = extent(it);
        for (var r = 0; r < rowEnds.length; r++) {
          if (rowEnds[r] <= e[0]) break;
        }
        rowEnds[r] = e[1] + 2;
        it.row = r;
      });
    return rowEnds.length;
  }

  function draw(chart, model) {
    var width = Math.floor(chart.clientWidth);
    if (width < 50) return null;
    var narrow = width < NARROW_PX;
    var labelW = narrow ? 0 : Math.min(190, Math.round(width * 0.24));
    var x0 = labelW + (narrow ? 10 : 12);
    var x1 = width - 14;
    var plotW = Math.max(20, x1 - x0);
    var rowH = narrow ? 46 : 26; // narrow: a 44 px hit area per row (tap target)
    var barH = narrow ? 22 : 16;
    var markRowH = narrow ? 46 : 22;
    var labelRowH = narrow ? 20 : 0;
    var minHit = narrow ? 28 : 12;
    var minBar = narrow ? 8 : 6; // a hold of a few ms still shows its colour
    var scale = function (t) {
      return x0 + ((t - model.start) / (model.end - model.start)) * plotW;
    };
    var clampX = function (x) {
      return Math.max(x0, Math.min(x1, x));
    };

    // Geometry first: rows per lane.
    var y = 8;
    model.lanes.forEach(function (lane) {
      lane.holds.forEach(function (h) {
        h.x0 = clampX(scale(h.start));
        h.x1 = Math.max(clampX(scale(h.end)), h.x0 + minBar);
        var w = Math.max(h.x1 - h.x0, minHit);
        h.hx0 = Math.max(x0 - 4, Math.min(h.x0 - (w - (h.x1 - h.x0)) / 2, x1 + 4 - w));
        h.hx1 = h.hx0 + w;
      });
      var rows = pack(lane.holds, function (h) {
        return [h.hx0, h.hx1];
      });
      lane.top = y;
      lane.labelY = y;
      y += labelRowH;
      lane.markY = y;
      if (lane.marks.length) y += markRowH;
      lane.holdY = y;
      y += Math.max(rows, lane.marks.length ? 0 : 1) * rowH;
      lane.bottom = y + 4;
      y = lane.bottom;
    });
    var axisY = y + 2;
    var height = axisY + 40;

    var root = svg("svg", {
      class: "tl-svg",
      width: width,
      height: height,
      viewBox: "0 0 " + width + " " + height,
      role: "group",
      "aria-labelledby": "timeline-title",
      "aria-describedby": "timeline-status"
    });
    chart.appendChild(root);

    // Lane backgrounds and separators.
    var back = svg("g", { "aria-hidden": "true" }, root);
    model.lanes.forEach(function (lane, i) {
      svg("rect", { class: "tl-lane-bg" + (i % 2 ? " alt" : ""), x: 0, y: lane.top - 4, width: width, height: lane.bottom - lane.top + 4 }, back);
      if (i) svg("line", { class: "tl-lane-sep", x1: 0, y1: lane.top - 4, x2: width, y2: lane.top - 4 }, back);
    });

    // Axis and grid.
    var axis = svg("g", { class: "tl-axis", "aria-hidden": "true" }, root);
    var tk = ticks(model.start, model.end, plotW);
    var lastDay = null;
    svg("line", { class: "tl-axis-line", x1: x0, y1: axisY, x2: x1, y2: axisY }, axis);
    var lastLabelEnd = -Infinity;
    tk.times.forEach(function (t) {
      var x = scale(t);
      if (x < x0 - 0.5 || x > x1 + 0.5) return;
      svg("line", { class: "tl-grid", x1: x, y1: 4, x2: x, y2: axisY }, back);
      svg("line", { class: "tl-tick", x1: x, y1: axisY, x2: x, y2: axisY + 5 }, axis);
      var label = svg("text", { class: "tl-axis-label", x: x, y: axisY + 17, "text-anchor": "middle" }, axis);
      label.textContent = tickLabel(t, tk.step);
      // Keep labels inside the picture.
      var w = label.getComputedTextLength();
      var lx = Math.max(w / 2 + 2, Math.min(width - w / 2 - 2, x));
      label.setAttribute("x", lx.toFixed(1));
      if (lx - w / 2 < lastLabelEnd + 4) {
        axis.removeChild(label);
        return;
      }
      lastLabelEnd = lx + w / 2;
      if (tk.step < DAY && (lastDay === null || !sameDay(lastDay, t))) {
        var dl = svg("text", { class: "tl-axis-date", x: lx, y: axisY + 32, "text-anchor": "middle" }, axis);
        dl.textContent = new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" });
        lastDay = t;
      }
    });
    if (tk.step < DAY && lastDay === null) {
      var d0 = svg("text", { class: "tl-axis-date", x: x0, y: axisY + 32, "text-anchor": "start" }, axis);
      d0.textContent = new Date(model.start).toLocaleDateString(undefined, { month: "short", day: "numeric" });
    }
    if (model.now >= model.start && model.now <= model.end) {
      var nx = scale(model.now);
      svg("line", { class: "tl-now", x1: nx, y1: 4, x2: nx, y2: axisY }, axis);
    }

    // Lanes: label, marks, holds.
    var items = [];
    model.lanes.forEach(function (lane) {
      var n = lane.holds.length;
      var m = lane.marks.length;
      var g = svg("g", {
        class: "tl-lane",
        role: "group",
        "data-lane": lane.id,
        "aria-label": lane.title + ": " + n + " hold" + (n === 1 ? "" : "s") + (m ? ", " + m + " mark" + (m === 1 ? "" : "s") : "")
      }, root);
      if (lane.field !== null) g.setAttribute("data-field", lane.field);
      g.setAttribute("data-owner", lane.owner);
      var text = svg("text", {
        class: "tl-lane-label",
        x: narrow ? x0 : 10,
        y: narrow ? lane.labelY + 13 : lane.top + 17,
        "aria-hidden": "true"
      }, g);
      fitText(text, lane.label, narrow ? plotW : labelW - 14);
      svg("title", null, text).textContent = lane.title; // the whole name, on hover

      lane.marks.forEach(function (mk) {
        var cx = Math.max(x0, Math.min(x1, scale(mk.at)));
        var cy = lane.markY + markRowH / 2;
        var hw = narrow ? 22 : 10;
        var item = svg("g", {
          class: "tl-item tl-mark tl-kind--" + mk.kind,
          tabindex: 0,
          role: "button",
          "data-kind": mk.kind,
          "data-count": mk.count,
          "data-key": mk.key,
          "aria-label": accessibleName(mk)
        }, g);
        svg("rect", { class: "tl-hit", x: cx - hw, y: lane.markY + 1, width: hw * 2, height: markRowH - 2, rx: 4 }, item);
        markShape(mk.kind, cx, cy, narrow ? 7 : 6, item);
        item.__tlItem = mk;
        items.push(item);
      });

      lane.holds.forEach(function (h) {
        var top = lane.holdY + h.row * rowH;
        var by = top + (rowH - barH) / 2;
        var item = svg("g", {
          class: "tl-item tl-hold tl-end--" + h.ending,
          tabindex: 0,
          role: "button",
          "data-ending": h.ending,
          "data-field": h.field,
          "data-owner": h.owner,
          "data-token": h.token === null || h.token === undefined ? "" : h.token,
          "data-key": h.key,
          "aria-label": accessibleName(h)
        }, g);
        svg("rect", { class: "tl-hit", x: h.hx0, y: top + 1, width: h.hx1 - h.hx0, height: rowH - 2, rx: 4 }, item);
        var arrow = (h.ending === "held" || h.stillHeld) && !h.cutEnd ? Math.min(8, (h.x1 - h.x0) / 2) : 0;
        svg("rect", {
          class: "tl-bar",
          x: h.x0 + 0.5,
          y: by + 0.5,
          width: Math.max(2, h.x1 - h.x0 - arrow - 1),
          height: barH - 1,
          rx: Math.min(3, (h.x1 - h.x0) / 2),
          fill: fillOf(h.ending)
        }, item);
        if (arrow >= 3) {
          var ax = h.x1 - arrow - 1;
          svg("polygon", { class: "tl-arrow", points: ax + "," + (by - 2) + " " + (h.x1 + 2) + "," + (by + barH / 2) + " " + ax + "," + (by + barH + 2) }, item);
        }
        if (h.stillHeld) {
          item.setAttribute("data-still-held", "true");
          item.classList.add("tl-still-held");
          var rx = clampX(scale(h.revokedAt));
          svg("line", { class: "tl-revoked-at", x1: rx, y1: by - 3, x2: rx, y2: by + barH + 3 }, item);
        }
        // A bar cut by the edge of the view says so with a small notch.
        if (h.cutStart) svg("polygon", { class: "tl-cut", points: x0 + "," + by + " " + (x0 + 5) + "," + (by + barH / 2) + " " + x0 + "," + (by + barH) }, item);
        if (h.cutEnd && h.ending !== "held") svg("polygon", { class: "tl-cut", points: x1 + "," + by + " " + (x1 - 5) + "," + (by + barH / 2) + " " + x1 + "," + (by + barH) }, item);
        item.__tlItem = h;
        items.push(item);
      });
    });
    return { root: root, items: items };
  }

  // ------------------------------------------------------------------ the accessible table
  function buildTables(box, model, onSelect) {
    clear(box);
    var holds = [];
    var marks = [];
    model.lanes.forEach(function (l) {
      holds = holds.concat(l.holds);
      marks = marks.concat(l.marks);
    });
    holds.sort(function (a, b) {
      return a.start - b.start;
    });
    marks.sort(function (a, b) {
      return a.at - b.at;
    });

    function table(caption, heads, rows, className, classes) {
      var wrap = el("div", "table-wrap");
      var t = el("table", "data stack " + className);
      t.appendChild(el("caption", null, caption));
      var thead = el("thead");
      var hr = el("tr");
      heads.forEach(function (h) {
        var th = el("th", null, h);
        th.scope = "col";
        hr.appendChild(th);
      });
      thead.appendChild(hr);
      t.appendChild(thead);
      var tbody = el("tbody");
      rows.forEach(function (cells) {
        var tr = el("tr");
        cells.forEach(function (c, i) {
          var td = el("td", classes && classes[i]);
          td.setAttribute("data-label", heads[i]);
          if (c && c.nodeType) td.appendChild(c);
          else if (c === "" || c === null || c === undefined) td.appendChild(el("span", "null", "\u2014"));
          else td.textContent = String(c);
          tr.appendChild(td);
        });
        tbody.appendChild(tr);
      });
      t.appendChild(tbody);
      wrap.appendChild(t);
      box.appendChild(wrap);
      return t;
    }

    /** The lock's name as a link-like button that filters the events table to the item. */
    function showButton(item, name, what) {
      var b = el("button", "linklike", name);
      b.type = "button";
      b.setAttribute("aria-label", name + ": show the events of " + what + " in the table");
      b.title = "Show the events of " + what + " in the table";
      b.addEventListener("click", function () {
        onSelect(item);
      });
      return b;
    }

    // The owner is in the caption when the view is one owner's locks.
    var lockName = function (x) {
      return model.perField && model.lanes.length && model.lanes[0].owner === x.owner ? fieldLabel(x.field) : x.owner + " / " + fieldLabel(x.field);
    };
    // Times: the clock alone when the whole view is one day (the caption names it).
    var oneDay = sameDay(model.start, model.end);
    var when = function (ms) {
      return oneDay ? clockTime(ms, true) : fullTime(ms);
    };
    var day = (model.perField && model.lanes.length ? " of " + model.lanes[0].owner : "") +
      (oneDay ? " (" + dateLabel(model.start) + ", local time)" : " (local time)");
    if (holds.length) {
      table(
        "Holds in the timeline" + day + ", oldest first; a lock's name shows that hold's events in the table",
        ["Lock", "Holder (pid @ host)", "Operation", "Token", "Acquired \u2192 ended", "Held for", "How it ended"],
        holds.map(function (h) {
          var how = el("span", "tl-table-swatch");
          how.appendChild(swatch(h.ending));
          var e = ENDING[h.ending];
          how.appendChild(el("span", null, e.label + (h.ending === "held" && h.stale ? " (STALE)" : "") + ": " + (h.stillHeld ? stillHeldWords(h) : e.help)));
          var who = el("span");
          who.appendChild(el("span", "holder", h.holder || "\u2014"));
          who.appendChild(el("span", "where", pidText(h)));
          var held = h.ending === "open" || h.stillHeld ? (h.stillHeld ? "" : "at least ") + formatDuration(h.end - h.start) : formatDuration(typeof h.heldMs === "number" ? h.heldMs : h.end - h.start);
          var span = el("span");
          span.appendChild(el("span", "tl-line", when(h.start) + (h.startKnown ? "" : " (from the held time)")));
          span.appendChild(
            el("span", "tl-line", "\u2192 " + (h.stillHeld ? "revoked " + when(h.revokedAt) + ", still held" : h.ending === "held" ? "still held" : h.ending === "open" ? "not loaded" : when(h.end)))
          );
          return [
            showButton(h, lockName(h), "token " + h.token + " on " + h.owner + " / " + fieldLabel(h.field)),
            who, h.operation, h.token, span,
            held + (h.ending === "held" || h.stillHeld ? " so far" : ""), how
          ];
        }),
        "tl-holds-table",
        [null, "holder-cell", null, "nowrap", "nowrap", null, null]
      ).setAttribute("data-rows", String(holds.length));
    }
    if (marks.length) {
      table(
        "Waits and external holders in the timeline" + day,
        ["When", "Lock", "What", "Holder", "Operation", "Reason"],
        marks.map(function (m) {
          return [
            when(m.at), showButton(m, lockName(m), "this " + MARKS[m.kind].short.toLowerCase() + " event"),
            markLabel(m), m.holder, m.operation, m.reason
          ];
        }),
        "tl-marks-table",
        ["nowrap", null, null, null, null, null]
      );
    }
    if (!holds.length && !marks.length) box.appendChild(el("p", "muted", "Nothing to list."));
  }

  // ------------------------------------------------------------------ the widget
  function create(els, handlers) {
    var chart = els.chart;
    var tip = el("div", "tl-tip");
    tip.id = "timeline-tip";
    // Seen, not read: the item's accessible name already says all of it.
    tip.setAttribute("aria-hidden", "true");
    tip.hidden = true;
    var state = { model: null, drawn: null, width: 0, active: null, hover: null, hideTimer: null };
    els.section.appendChild(buildDefs());
    buildLegend(els.legend);

    /** viaPointer: the pointer is on the item, so the tooltip takes the pointer too (it can
     * be hovered without vanishing); shown for keyboard focus it lets clicks through. */
    function showTip(node, viaPointer) {
      clearTimeout(state.hideTimer);
      var item = node.__tlItem;
      if (!item) return;
      tip.classList.toggle("is-pointer", !!viaPointer);
      if (state.active && state.active !== node) state.active.classList.remove("is-active");
      state.active = node;
      node.classList.add("is-active");
      clear(tip);
      tip.appendChild(el("p", "tl-tip-title", titleOf(item)));
      var dl = el("dl");
      details(item).forEach(function (r) {
        var row = el("div");
        row.appendChild(el("dt", null, r[0]));
        row.appendChild(el("dd", null, r[1]));
        row.style.display = "contents";
        dl.appendChild(row);
      });
      tip.appendChild(dl);
      tip.appendChild(el("p", "tl-tip-hint", "Click or press Enter to show its events in the table."));
      tip.hidden = false;
      // Above the item when the window has room, else below; never past the chart's sides.
      var box = node.getBoundingClientRect();
      var outer = chart.getBoundingClientRect();
      var tw = tip.offsetWidth;
      var th = tip.offsetHeight;
      var left = box.left - outer.left + box.width / 2 - tw / 2;
      left = Math.max(4, Math.min(outer.width - tw - 4, left));
      var top = box.top - th - 6 >= 0 ? box.top - outer.top - th - 6 : box.bottom - outer.top + 6;
      tip.style.left = Math.round(left) + "px";
      tip.style.top = Math.round(top) + "px";
    }

    function hideTip() {
      clearTimeout(state.hideTimer);
      tip.hidden = true;
      if (state.active) state.active.classList.remove("is-active");
      state.active = null;
    }

    function hideSoon() {
      clearTimeout(state.hideTimer);
      state.hideTimer = setTimeout(hideTip, 250);
    }

    function itemNode(target) {
      var n = target;
      while (n && n !== chart) {
        if (n.__tlItem) return n;
        n = n.parentNode;
      }
      return null;
    }

    chart.addEventListener("mouseover", function (ev) {
      var n = itemNode(ev.target);
      state.hover = n;
      if (n) showTip(n, true);
      else if (tip.contains(ev.target)) clearTimeout(state.hideTimer);
    });
    chart.addEventListener("mouseout", function (ev) {
      var from = itemNode(ev.target);
      var to = ev.relatedTarget && itemNode(ev.relatedTarget);
      if (!to) state.hover = null;
      if (from && from !== to && document.activeElement !== from) hideSoon();
      if (tip.contains(ev.target) && !tip.contains(ev.relatedTarget)) hideSoon();
    });
    chart.addEventListener("focusin", function (ev) {
      var n = itemNode(ev.target);
      if (n) showTip(n, state.hover === n);
    });
    chart.addEventListener("focusout", function (ev) {
      var n = itemNode(ev.target);
      if (n && !itemNode(ev.relatedTarget || document.body)) hideTip();
    });
    chart.addEventListener("click", function (ev) {
      var n = itemNode(ev.target);
      if (n) handlers.onSelect(n.__tlItem);
    });
    chart.addEventListener("keydown", function (ev) {
      var n = itemNode(ev.target);
      if (!n) return;
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        handlers.onSelect(n.__tlItem);
      } else if (ev.key === "Escape") {
        if (!tip.hidden) {
          ev.preventDefault();
          hideTip();
        }
      } else if (ev.key === "ArrowRight" || ev.key === "ArrowLeft" || ev.key === "Home" || ev.key === "End") {
        var items = state.drawn ? state.drawn.items : [];
        var i = items.indexOf(n);
        var j = ev.key === "Home" ? 0 : ev.key === "End" ? items.length - 1 : i + (ev.key === "ArrowRight" ? 1 : -1);
        if (j >= 0 && j < items.length) {
          ev.preventDefault();
          items[j].focus();
        }
      }
    });
    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape" && !tip.hidden) hideTip();
    });

    function redraw(force) {
      if (!state.model) return;
      var w = Math.floor(chart.clientWidth);
      if (!force && w === state.width) return;
      var focusedKey = chart.contains(document.activeElement) && document.activeElement.getAttribute ? document.activeElement.getAttribute("data-key") : null;
      hideTip();
      clear(chart);
      state.width = w;
      state.drawn = state.model.lanes.length ? draw(chart, state.model) : null;
      chart.appendChild(tip);
      if (focusedKey) focusItem(focusedKey);
    }

    if (window.ResizeObserver) {
      var pending = false;
      new ResizeObserver(function () {
        if (pending) return;
        pending = true;
        window.requestAnimationFrame(function () {
          pending = false;
          redraw(false);
        });
      }).observe(chart);
    } else {
      window.addEventListener("resize", function () {
        redraw(false);
      });
    }

    function setNotes(notes) {
      clear(els.notes);
      notes.forEach(function (n) {
        els.notes.appendChild(el("li", null, n));
      });
    }

    function focusItem(key) {
      if (!state.drawn) return false;
      for (var i = 0; i < state.drawn.items.length; i++) {
        if (state.drawn.items[i].getAttribute("data-key") === key) {
          state.drawn.items[i].focus();
          return true;
        }
      }
      return false;
    }

    return {
      loading: function () {
        els.chart.setAttribute("aria-busy", "true");
        els.status.textContent = "Loading the timeline\u2026";
      },
      error: function (message) {
        els.chart.setAttribute("aria-busy", "false");
        state.model = null;
        clear(chart);
        chart.setAttribute("data-empty", "true");
        els.status.textContent = "";
        setNotes(["Could not draw the timeline: " + message]);
        clear(els.tables);
      },
      /** events: history rows; live: held and stale locks now; opts: see buildModel plus
       * {truncated, eventFilter, liveError}. */
      show: function (events, live, opts) {
        var model = buildModel(events, live, opts);
        state.model = model;
        els.chart.setAttribute("aria-busy", "false");
        var empty = !model.lanes.length;
        chart.setAttribute("data-empty", empty ? "true" : "false");
        var range = sameDay(model.start, model.end)
          ? dateLabel(model.start) + ", " + clockTime(model.start) + " \u2013 " + clockTime(model.end)
          : fullTime(model.start) + " \u2013 " + fullTime(model.end);
        var laneWord = model.perField ? "lock" : "owner";
        var status;
        if (empty) status = "Nothing to draw: no holds or waits match these filters.";
        else {
          status =
            model.shownHolds + " hold" + (model.shownHolds === 1 ? "" : "s") +
            (model.shownMarks ? " and " + model.shownMarks + " mark" + (model.shownMarks === 1 ? "" : "s") : "") +
            " on " + model.lanes.length + " " + laneWord + (model.lanes.length === 1 ? "" : "s") +
            ", " + range + " (local time).";
        }
        els.status.textContent = status;
        var notes = [];
        if (model.omitted.length) {
          var names = model.omitted.slice(0, 5).map(function (l) {
            return l.label;
          });
          notes.push(
            "The " + model.lanes.length + " busiest " + laneWord + "s are shown; " + model.omitted.length + " quieter " +
            laneWord + (model.omitted.length === 1 ? " is" : "s are") + " left out (" + names.join(", ") +
            (model.omitted.length > names.length ? ", \u2026" : "") + ")" + (model.perField ? "." : ": filter by owner to see one.")
          );
        }
        if (opts.truncated) notes.push("Only the newest " + events.length + " events are drawn; narrow the time range to see older holds.");
        if (opts.eventFilter) notes.push("The timeline shows every kind of event; the event filter applies to the table below.");
        if (opts.liveError) notes.push("The current status could not be read (" + opts.liveError + "), so holds without a closing event show as \u201cend not loaded\u201d.");
        setNotes(notes);
        buildTables(els.tables, model, handlers.onSelect);
        redraw(true);
      },
      focusItem: focusItem,
      hideTip: hideTip
    };
  }

  window.LockTimeline = { create: create, buildModel: buildModel, ticks: ticks, MAX_LANES: MAX_LANES };
})();
