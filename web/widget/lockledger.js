/*!
 * lockledger Lock Status widget — one script, one stylesheet, no dependencies.
 *
 *   <link rel="stylesheet" href="/ui/widget/lockledger.css">
 *   <script src="/ui/widget/lockledger.js"></script>
 *   <script>
 *     const lockStatus = LockLedger.mount({
 *       baseUrl: "",                                  // where lockledger is served ("" = this origin)
 *       container: document.querySelector("#settings-quick-actions"),
 *       getConversationId: () => currentConversationId,
 *       adminToken: undefined,                        // optional; else typed in the modal (sessionStorage only)
 *       token: undefined,                             // optional user token (or a function returning it), when the service requires one
 *     });
 *     // lockStatus.open(), lockStatus.close(), lockStatus.refresh()
 *   </script>
 *
 * It adds the Lock Status button (id "settings-lock-status-modal-open-button") to the
 * container and creates the <dialog id="lock-status-modal"> itself. Every clear answer is
 * shown per lock as the service states it (outcomes[].note, details[].note): success
 * styling only when the service says nothing is held or stale any more, and a force clear
 * whose holder still holds its file lock says "revoked, still held by process N", never
 * "cleared". Lock files of keys that are not configured are listed with a tag. Everything that
 * comes from the service (lock fields, holder labels, command lines, reasons) is
 * untrusted and is only ever set with textContent / attributes, never innerHTML.
 */
(function () {
  "use strict";

  var ADMIN_KEY = "lockledger.adminToken";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var BUTTON_ID = "settings-lock-status-modal-open-button";
  var DIALOG_ID = "lock-status-modal";

  var STATE_LABEL = { free: "CLEAR", held: "HELD", stale: "STALE", unsafe: "UNSAFE" };
  var STALE_WORDS = {
    holder_dead: "Stale: the process that held it is gone (crashed or killed), but it was never released.",
    lease_expired: "Stale: the lease was not renewed in time.",
    held_too_long: "Stale: held by a live process that has stopped renewing for too long (hung)."
  };
  /** What a safe clear did to a lock, by `outcomes[].outcome`: the word shown and its tone. */
  var OUTCOME_WORDS = {
    cleared: { word: "Cleared", tone: "ok" },
    live: { word: "Left alone: live holder", tone: "held" },
    held_too_long: { word: "Left alone: hung holder (admin may force clear)", tone: "stale" },
    changed: { word: "Changed since you looked", tone: "neutral" },
    external: { word: "Left alone: held outside lockledger", tone: "held" },
    leased_elsewhere: { word: "Left alone: leased through another lockledger service", tone: "held" },
    unsafe_lock_file: { word: "Left alone: not a regular lock file", tone: "stale" }
  };
  /** The service refuses force-clear reasons longer than this many UTF-8 bytes. */
  var MAX_REASON_BYTES = 200;

  function utf8Length(text) {
    return typeof TextEncoder === "function" ? new TextEncoder().encode(text).length : unescape(encodeURIComponent(text)).length;
  }
  var KIND_WORDS = {
    lease: "service lease",
    library: "in-process (library)",
    external: "external process (not managed by lockledger)"
  };

  var uid = 0;
  function nextId(prefix) {
    uid += 1;
    return "ll-" + prefix + "-" + uid;
  }

  /** Creates an element. attrs: className, text, or attribute names; children: nodes or strings. */
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) return;
        if (k === "className") node.className = v;
        else if (k === "text") node.textContent = String(v);
        else if (k === "hidden") node.hidden = true;
        else node.setAttribute(k, v === true ? "" : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) {
      child.forEach(function (c) { append(node, c); });
    } else if (typeof child === "string" || typeof child === "number") {
      node.appendChild(document.createTextNode(String(child)));
    } else {
      node.appendChild(child);
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function lockIcon() {
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "ll-icon");
    var path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("fill-rule", "evenodd");
    path.setAttribute(
      "d",
      "M12 2a5 5 0 0 0-5 5v3H6a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2v-8a2 2 0 0 0-2-2h-1V7" +
        "a5 5 0 0 0-5-5zm-3 8V7a3 3 0 0 1 6 0v3H9zm3 3a2 2 0 0 1 1 3.73V19h-2v-2.27A2 2 0 0 1 12 13z"
    );
    svg.appendChild(path);
    return svg;
  }

  function fieldLabel(field) {
    return field === "" ? "(main)" : String(field);
  }

  function formatAge(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    var s = Math.floor(seconds);
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function formatTime(rfc3339) {
    if (!rfc3339) return "";
    var d = new Date(rfc3339);
    if (isNaN(d.getTime())) return String(rfc3339);
    // Today's times without the date: the common case, and short enough not to wrap.
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function timeEl(rfc3339) {
    return el("time", { datetime: rfc3339, title: rfc3339, text: formatTime(rfc3339) });
  }

  function readStoredToken() {
    try {
      return window.sessionStorage.getItem(ADMIN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function storeToken(value) {
    try {
      if (value) window.sessionStorage.setItem(ADMIN_KEY, value);
      else window.sessionStorage.removeItem(ADMIN_KEY);
    } catch (e) {
      /* storage disabled: the token lives in memory for this page only */
    }
  }

  function ApiError(code, message, status) {
    this.code = code;
    this.message = message;
    this.status = status;
  }

  function describeError(err) {
    if (err instanceof ApiError) {
      if (err.status === 401 || err.status === 403) {
        if (err.code === "admin_only" || err.code === "unauthenticated") {
          return "Refused (" + err.status + "): " + err.message + ".";
        }
      }
      return err.message + (err.code ? " (" + err.code + ")" : "");
    }
    return String((err && err.message) || err);
  }

  function mount(options) {
    var opts = options || {};
    var base = String(opts.baseUrl || "").replace(/\/+$/, "");
    var container = opts.container;
    var getConversationId =
      typeof opts.getConversationId === "function" ? opts.getConversationId : function () { return ""; };
    var pageAdminToken = opts.adminToken ? String(opts.adminToken) : "";
    // The user token: a string, or a function asked before each call (so a page can let
    // the user type it later).
    function userToken() {
      var t = typeof opts.token === "function" ? opts.token() : opts.token;
      return t ? String(t) : "";
    }

    if (!container || !container.appendChild) {
      throw new Error("LockLedger.mount: options.container must be an element");
    }

    function adminToken() {
      return pageAdminToken || readStoredToken();
    }

    function api(method, path, body, asAdmin) {
      var headers = { Accept: "application/json", "X-Lockledger-Actor": "lock-status-modal" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (asAdmin) headers.Authorization = "Bearer " + adminToken();
      else if (userToken()) headers["X-Lockledger-Token"] = userToken();
      var init = { method: method, headers: headers, cache: "no-store", credentials: "same-origin" };
      if (body !== undefined) init.body = JSON.stringify(body);
      var request;
      try {
        request = fetch(base + path, init);
      } catch (e) {
        return Promise.reject(new ApiError("request", "Cannot send the request: " + e.message, 0));
      }
      return request.then(
        function (resp) {
          return resp.text().then(function (text) {
            var data = null;
            try {
              data = text ? JSON.parse(text) : null;
            } catch (e) {
              data = null;
            }
            if (!resp.ok) {
              var e = data && data.error;
              throw new ApiError(
                (e && e.code) || "http_" + resp.status,
                (e && e.message) || "The service answered " + resp.status + ".",
                resp.status
              );
            }
            return data;
          });
        },
        function (e) {
          throw new ApiError("network", "Cannot reach lockledger: " + e.message, 0);
        }
      );
    }

    // ------------------------------------------------------------------ the button
    var button = el("button", {
      type: "button",
      className: "ll-scope ll-open-button ll-btn ll-btn-warning " + (opts.buttonClass || "btn btn-warning"),
      title: "Check and clear lock files that may be stuck",
      "aria-haspopup": "dialog"
    });
    if (!document.getElementById(BUTTON_ID)) button.id = BUTTON_ID;
    button.appendChild(lockIcon());
    button.appendChild(el("span", { className: "ll-open-button-text", text: "Lock Status" }));
    container.appendChild(button);

    // ------------------------------------------------------------------ the dialog
    var titleId = nextId("title");
    var descId = nextId("desc");
    var dialog = el("dialog", {
      className: "ll-scope ll-modal",
      "aria-labelledby": titleId,
      "aria-describedby": descId
    });
    if (!document.getElementById(DIALOG_ID)) dialog.id = DIALOG_ID;

    var title = el("h2", { id: titleId, className: "ll-title", tabindex: "-1", text: "Lock Status" });
    var closeX = el("button", { type: "button", className: "ll-icon-button ll-close-x", "aria-label": "Close Lock Status" }, "\u00d7");
    var convLine = el("p", { id: descId, className: "ll-sub" });

    var summary = el("p", { className: "ll-summary", role: "status", "aria-live": "polite" });
    var lockList = el("ul", { className: "ll-lock-list", "aria-label": "Locks of this conversation" });

    var refreshBtn = el("button", { type: "button", className: "ll-btn ll-btn-secondary ll-refresh" }, "Refresh");
    var clearBtn = el("button", { type: "button", className: "ll-btn ll-btn-danger ll-clear", hidden: true }, "Clear stuck locks");
    var historyLink = el("a", { className: "ll-link ll-history-link", target: "_blank", rel: "noopener" }, "View lock history");
    var actions = el("div", { className: "ll-actions" }, refreshBtn, clearBtn, historyLink);

    var confirmTitleId = nextId("confirm");
    var confirmText = el("p", { id: confirmTitleId, className: "ll-confirm-title" });
    var confirmList = el("ul", { className: "ll-confirm-list" });
    var confirmYes = el("button", { type: "button", className: "ll-btn ll-btn-danger ll-confirm-yes" }, "Yes, clear them");
    var confirmNo = el("button", { type: "button", className: "ll-btn ll-btn-secondary ll-confirm-no" }, "Cancel");
    var confirmBox = el(
      "div",
      { className: "ll-confirm", role: "group", "aria-labelledby": confirmTitleId, hidden: true },
      confirmText,
      confirmList,
      el("p", {
        className: "ll-muted",
        text:
          "Only locks whose holder is gone or whose lease expired are cleared. Live holders are never touched, " +
          "and a lock that changed since you looked is skipped."
      }),
      el("div", { className: "ll-actions" }, confirmYes, confirmNo)
    );

    var resultHeading = el("h3", { className: "ll-result-title", tabindex: "-1" });
    var resultBody = el("div", { className: "ll-result-body" });
    var result = el("section", { className: "ll-result", "aria-live": "polite", hidden: true }, resultHeading, resultBody);
    var errorBox = el("p", { className: "ll-error", role: "alert", hidden: true });

    // Admin: token kept in sessionStorage only (or given by the page).
    var adminInputId = nextId("admin-token");
    var adminInput = el("input", {
      id: adminInputId,
      type: "password",
      className: "ll-input",
      autocomplete: "off",
      spellcheck: "false"
    });
    var adminSave = el("button", { type: "submit", className: "ll-btn ll-btn-secondary ll-admin-save" }, "Use token");
    var adminForget = el("button", { type: "button", className: "ll-btn ll-btn-secondary ll-admin-forget" }, "Forget");
    var adminState = el("p", { className: "ll-admin-state", "aria-live": "polite" });
    var adminForm = el(
      "form",
      { className: "ll-admin-row", "aria-label": "Admin token" },
      el("input", { type: "text", name: "username", value: "lockledger-admin", autocomplete: "username", hidden: true }),
      el("label", { for: adminInputId, text: "Admin token" }),
      adminInput,
      adminSave,
      adminForget
    );
    var adminBox = el(
      "details",
      { className: "ll-admin" },
      el("summary", { text: "Admin: force clear" }),
      el(
        "p",
        {
          className: "ll-muted",
          text:
            "A force clear also revokes live and hung holders. Their writes are refused from then on (fencing), " +
            "but work in progress may be lost. The token is kept in this tab's session storage only."
        }
      ),
      adminForm,
      adminState
    );

    var closeBtn = el("button", { type: "button", className: "ll-btn ll-btn-secondary ll-close" }, "Close");

    dialog.appendChild(
      el(
        "div",
        { className: "ll-modal-inner" },
        el("header", { className: "ll-header" }, el("div", null, title, convLine), closeX),
        summary,
        errorBox,
        lockList,
        actions,
        confirmBox,
        result,
        adminBox,
        el("footer", { className: "ll-footer" }, closeBtn)
      )
    );
    (document.body || document.documentElement).appendChild(dialog);

    // ------------------------------------------------------------------ state
    var conversationId = "";
    var status = null;
    var seq = 0;
    var busy = false;
    var returnFocus = null;

    function setBusy(on) {
      busy = on;
      dialog.setAttribute("aria-busy", on ? "true" : "false");
      refreshBtn.disabled = on;
      confirmYes.disabled = on;
      clearBtn.disabled = on;
    }

    function showError(message) {
      errorBox.textContent = message || "";
      errorBox.hidden = !message;
    }

    function hideConfirm() {
      confirmBox.hidden = true;
    }

    function showResult(heading, nodes, kind) {
      result.hidden = false;
      result.className = "ll-result" + (kind ? " ll-result--" + kind : "");
      resultHeading.textContent = heading;
      recheck = [];
      clear(resultBody);
      append(resultBody, nodes);
    }

    function hideResult() {
      result.hidden = true;
      recheck = [];
      clear(resultBody);
    }

    function updateAdminState() {
      var t = adminToken();
      if (pageAdminToken) {
        adminState.textContent = "An admin token was provided by this page: force clear is available.";
        adminInput.disabled = true;
        adminSave.disabled = true;
        adminForget.disabled = true;
      } else if (t) {
        adminState.textContent = "Admin token set for this tab: a Force clear button is shown on each held or stale lock.";
        adminForget.disabled = false;
      } else {
        adminState.textContent = "No admin token: force clear is not available.";
        adminForget.disabled = true;
      }
    }

    // ------------------------------------------------------------------ rendering
    function fact(dl, name, value) {
      if (value === undefined || value === null || value === "") return;
      var key = name.toLowerCase();
      dl.appendChild(el("div", { className: "ll-fact", "data-fact": key }, el("dt", { text: name }), el("dd", null, value)));
    }

    function revokedWords(lock) {
      var who = lock.pid ? "process " + lock.pid : "its holder";
      return (
        "Force-cleared: " + who + " was asked to let go but still holds the file lock. Its writes are refused (fenced); " +
        "the lock frees when that process lets go or ends."
      );
    }

    function lockDescription(lock) {
      if (lock.state === "unsafe") {
        return (
          "Not a regular lock file: " + (lock.unsafe_file || "something else") + " is at this lock's path. " +
          "lockledger never opens or follows it, so it cannot tell whether this lock is held, and it cannot be cleared here. " +
          "Remove that file so a regular lock file can be created."
        );
      }
      if (lock.state !== "free" && lock.revoke_requested) return revokedWords(lock);
      if (lock.state === "stale") {
        return STALE_WORDS[lock.stale_reason] || "Stale" + (lock.stale_reason ? " (" + lock.stale_reason + ")." : ".");
      }
      if (lock.state === "held") {
        if (lock.kind === "external") {
          return "Held by a process lockledger does not manage. It cannot be cleared here: that process must let go (or be stopped).";
        }
        return "Held by a live holder. It is left alone by Clear stuck locks.";
      }
      return "";
    }

    function canForce(lock) {
      return (
        !!adminToken() &&
        lock.state !== "free" &&
        lock.state !== "unsafe" &&
        lock.kind !== "external" &&
        !lock.revoke_requested &&
        lock.token !== null &&
        lock.token !== undefined
      );
    }

    /** A warning line: a visible sign and the word "Warning" for screen readers. */
    function warnLine(className, parts) {
      return el(
        "p",
        { className: "ll-warn " + className },
        el("span", { className: "ll-warn-sign", "aria-hidden": "true", text: "\u26a0" }),
        el("span", { className: "ll-warn-text" }, el("span", { className: "ll-visually-hidden", text: "Warning: " }), parts)
      );
    }

    /** file_replaced and conflict: shown whatever the lock's state. */
    function warnings(lock) {
      var out = [];
      if (lock.file_replaced) {
        out.push(
          warnLine("ll-file-replaced", [
            "Its lock file was deleted or replaced while it was held. ",
            "The holder still holds the old file; lockledger grants this lock again only after that holder ends."
          ])
        );
      }
      if (lock.unsafe_file && lock.state !== "unsafe") {
        out.push(
          warnLine("ll-unsafe-path", [
            "Its lock path now holds " + lock.unsafe_file + ", not a regular file; lockledger does not open it. ",
            "The holder shown here still holds its own (replaced) lock file."
          ])
        );
      }
      if (lock.conflict) {
        var c = lock.conflict;
        out.push(
          warnLine("ll-conflict", [
            el("strong", { text: "Two processes believe they hold this lock: " }),
            c.pid !== null && c.pid !== undefined ? "process " + c.pid : "another process",
            c.command ? [" (", el("code", { className: "ll-command", text: c.command }), ")"] : "",
            " holds the new file at this path, while the holder shown here holds the old one."
          ])
        );
      }
      return out;
    }

    function renderLock(lock) {
      var state = STATE_LABEL[lock.state] ? lock.state : "held";
      var li = el("li", { className: "ll-lock ll-lock--" + state, "data-field": lock.field });
      var name = el("span", { className: "ll-lock-name", text: fieldLabel(lock.field) });
      var badge = el("span", { className: "ll-badge ll-badge--" + state, text: STATE_LABEL[state] });
      var tags = [];
      if (lock.configured === false) {
        li.setAttribute("data-configured", "false");
        tags.push(
          el("span", {
            className: "ll-tag ll-tag--unconfigured",
            title: "Not one of this conversation's configured lock keys; its lock file is listed so nothing held is hidden",
            text: "not configured"
          })
        );
      }
      if (lock.state !== "free" && lock.revoke_requested) {
        tags.push(el("span", { className: "ll-tag ll-tag--revoke", text: "asked to let go" }));
      }
      var head = el("div", { className: "ll-lock-head" }, name, badge, tags, el("span", { className: "ll-lock-file", text: lock.file || "" }));
      li.appendChild(head);
      warnings(lock).forEach(function (w) {
        li.appendChild(w);
      });
      if (lock.state === "free") return li;

      var desc = lockDescription(lock);
      if (desc) {
        li.appendChild(
          el(
            "p",
            { className: "ll-lock-reason" },
            desc,
            lock.stale_reason ? el("span", { className: "ll-code", text: " [" + lock.stale_reason + "]" }) : null
          )
        );
      }
      var dl = el("dl", { className: "ll-facts" });
      fact(dl, "Holder", lock.holder);
      fact(dl, "Operation", lock.operation);
      fact(dl, "PID", lock.pid === null || lock.pid === undefined ? "" : String(lock.pid));
      fact(dl, "Age", formatAge(lock.age_s));
      fact(dl, "Host", lock.host);
      fact(dl, "Thread", lock.thread);
      fact(dl, "Kind", lock.kind ? KIND_WORDS[lock.kind] || lock.kind : "");
      fact(dl, "Since", lock.acquired_at ? timeEl(lock.acquired_at) : "");
      fact(dl, "Renewed", lock.renewed_at ? timeEl(lock.renewed_at) : "");
      fact(dl, "Expires", lock.expires_at ? timeEl(lock.expires_at) : "");
      fact(dl, "Token", lock.token === null || lock.token === undefined ? "" : String(lock.token));
      fact(dl, "Command", lock.command ? el("code", { className: "ll-command", text: lock.command }) : "");
      li.appendChild(dl);
      if (lock.note) li.appendChild(el("p", { className: "ll-note", text: lock.note }));

      if (canForce(lock)) {
        var forceBtn = el(
          "button",
          { type: "button", className: "ll-btn ll-btn-danger-outline ll-force", "aria-label": "Force clear lock " + fieldLabel(lock.field) },
          "Force clear"
        );
        forceBtn.addEventListener("click", function () {
          openForcePanel(li, lock, forceBtn);
        });
        li.appendChild(el("div", { className: "ll-lock-actions" }, forceBtn));
      } else if (adminToken() && lock.kind === "external") {
        li.appendChild(el("p", { className: "ll-muted", text: "External holders cannot be force-cleared: stop that process instead." }));
      }
      return li;
    }

    function renderStatus(data) {
      status = data;
      clear(lockList);
      var locks = Array.isArray(data.locks) ? data.locks : [];
      var held = 0;
      var stale = 0;
      var unsafe = 0;
      var unconfigured = 0;
      var revoked = 0;
      locks.forEach(function (lock) {
        if (lock.state === "held") held += 1;
        if (lock.state === "stale") stale += 1;
        if (lock.state === "unsafe") unsafe += 1;
        if (lock.configured === false && lock.state !== "free") unconfigured += 1;
        if (lock.state !== "free" && lock.revoke_requested) revoked += 1;
        lockList.appendChild(renderLock(lock));
      });
      var when = new Date().toLocaleTimeString();
      var text;
      if (!held && !stale && !unsafe) text = "All " + locks.length + " locks are clear.";
      else {
        var parts = [];
        if (held) parts.push(held + " held");
        if (stale) parts.push(stale + " stale");
        if (unsafe) parts.push(unsafe + " not a regular lock file (cannot be checked)");
        if (revoked) parts.push(revoked + " force-cleared but not yet let go");
        if (unconfigured) parts.push(unconfigured + " on a key that is not configured");
        text = locks.length + " locks: " + parts.join(", ") + ".";
        if (data.can_cleanup) text += " Stuck locks can be cleared safely.";
        else if (!stale && !unsafe) text += " Nothing to clear: live holders are left alone.";
        else if (!stale) text += " Nothing can be cleared here: remove the file that is not a regular lock file.";
        else text += " Nothing can be cleared safely.";
      }
      summary.textContent = text + " Checked " + when + ".";
      clearBtn.hidden = !data.can_cleanup;
      if (!data.can_cleanup) hideConfirm();
      updateRecheck();
    }

    function refresh() {
      var my = ++seq;
      conversationId = String(getConversationId() || "");
      convLine.textContent = "";
      if (!conversationId) {
        clear(lockList);
        status = null;
        clearBtn.hidden = true;
        historyLink.hidden = true;
        summary.textContent = "No conversation is selected.";
        return Promise.resolve(null);
      }
      convLine.appendChild(document.createTextNode("Conversation "));
      convLine.appendChild(el("code", { text: conversationId }));
      historyLink.hidden = false;
      historyLink.href = base + "/ui/history?owner=" + encodeURIComponent(conversationId);
      setBusy(true);
      summary.textContent = "Checking locks\u2026";
      return api("GET", "/get_lock_status/" + encodeURIComponent(conversationId))
        .then(function (data) {
          if (my !== seq) return data;
          showError("");
          renderStatus(data);
          return data;
        })
        .catch(function (err) {
          if (my !== seq) return null;
          summary.textContent = "";
          showError("Could not read the lock status: " + describeError(err));
          return null;
        })
        .then(function (data) {
          if (my === seq) setBusy(false);
          return data;
        });
    }

    function shownTokens() {
      var tokens = {};
      ((status && status.locks) || []).forEach(function (lock) {
        if (lock.state !== "free" && typeof lock.token === "number") tokens[lock.field] = lock.token;
      });
      return tokens;
    }

    // ------------------------------------------------------------------ safe clear
    function askClear() {
      if (!status) return;
      var clearable = (status.locks || []).filter(function (l) { return l.clearable; });
      clear(confirmList);
      clearable.forEach(function (lock) {
        var why = lock.stale_reason ? lock.stale_reason.replace(/_/g, " ") : lock.state;
        var who = lock.pid ? " (pid " + lock.pid + ")" : "";
        confirmList.appendChild(
          el("li", null, el("span", { className: "ll-lock-name", text: fieldLabel(lock.field) }), " \u2014 " + why + who)
        );
      });
      var n = clearable.length;
      confirmText.textContent = "Clear " + n + " stuck lock" + (n === 1 ? "" : "s") + " on this conversation?";
      confirmYes.textContent = "Yes, clear " + (n === 1 ? "it" : "them");
      confirmBox.hidden = false;
      confirmYes.focus();
    }

    function doClear() {
      if (busy) return;
      var id = conversationId;
      setBusy(true);
      hideConfirm();
      api("POST", "/ensure_locks_cleared/" + encodeURIComponent(id), { tokens: shownTokens() })
        .then(function (out) {
          var r = clearResult(out || {});
          showResult(r.heading, r.nodes, r.kind);
          setBusy(false);
          return refresh();
        })
        .catch(function (err) {
          setBusy(false);
          showResult("Clearing failed", [el("p", { text: describeError(err) })], "error");
        })
        .then(function () {
          resultHeading.focus();
        });
    }

    /** Was this lock, as the status showed it, on a key that is not configured? */
    function isUnconfigured(field) {
      var locks = (status && status.locks) || [];
      for (var i = 0; i < locks.length; i++) {
        if (locks[i].field === field) return locks[i].configured === false;
      }
      return false;
    }

    function nowBadge(state) {
      var s = STATE_LABEL[state] ? state : "held";
      return el(
        "span",
        { className: "ll-now" },
        el("span", { className: "ll-visually-hidden", text: "State now: " }),
        el("span", { className: "ll-badge ll-badge--small ll-badge--" + s, title: "Its state now", text: "now " + STATE_LABEL[s] })
      );
    }

    /** One lock of a clear answer: its name, what happened (a word), its state now, the sentence. */
    function outcomeItem(o) {
      var words = OUTCOME_WORDS[o.outcome] || { word: String(o.outcome || "left alone"), tone: "neutral" };
      var word = words.word;
      if (o.outcome === "changed") word += o.state_now === "free" ? ": free now" : ": " + (STATE_LABEL[o.state_now] || o.state_now) + " now";
      return el(
        "li",
        { className: "ll-outcome ll-outcome--" + String(o.outcome || "").replace(/[^a-z_]/g, ""), "data-field": o.field, "data-outcome": o.outcome },
        el(
          "div",
          { className: "ll-outcome-head" },
          el("span", { className: "ll-lock-name", text: fieldLabel(o.field) }),
          el("span", { className: "ll-outcome-word ll-tone--" + words.tone, text: word }),
          isUnconfigured(o.field) ? el("span", { className: "ll-tag ll-tag--unconfigured", text: "not configured" }) : null,
          o.outcome === "cleared" && o.state_now === "free" ? null : nowBadge(o.state_now),
          o.file ? el("span", { className: "ll-lock-file", text: o.file }) : null
        ),
        o.note ? el("p", { className: "ll-outcome-note", text: o.note }) : null
      );
    }

    /** The heading, nodes and style of a safe clear's answer. Success styling only when the
     * service says nothing is held or stale any more. */
    function clearResult(out) {
      var nodes = [];
      var outcomes = Array.isArray(out.outcomes) ? out.outcomes : null;
      var nCleared = (out.cleared || []).length;
      if (!outcomes) {
        // A service without per-lock outcomes: its message and lists as they are.
        if (out.message) nodes.push(el("p", { text: out.message }));
        if (nCleared) nodes.push(el("ul", { className: "ll-result-cleared" }, out.cleared.map(function (f) { return el("li", null, el("code", { text: f })); })));
        if ((out.skipped || []).length) {
          nodes.push(el("ul", { className: "ll-result-skipped" }, out.skipped.map(function (s) {
            return el("li", null, el("span", { className: "ll-lock-name", text: fieldLabel(s.field) }), ": " + (s.reason || "skipped"));
          })));
        }
        return { heading: out.success ? "Done" : "Not everything is clear", nodes: nodes, kind: out.success ? "ok" : "warn" };
      }
      var cleared = outcomes.filter(function (o) { return o.outcome === "cleared"; });
      var others = outcomes.filter(function (o) { return o.outcome !== "cleared"; });
      var still = outcomes.filter(function (o) { return o.state_now && o.state_now !== "free"; }).length;
      var stillUnsafe = outcomes.filter(function (o) { return o.state_now === "unsafe"; }).length;
      if (cleared.length) {
        nodes.push(el("h4", { text: "Cleared" }));
        nodes.push(el("ul", { className: "ll-outcomes ll-result-cleared" }, cleared.map(outcomeItem)));
      }
      if (others.length) {
        nodes.push(el("h4", { text: "Not cleared" }));
        nodes.push(el("ul", { className: "ll-outcomes ll-result-skipped" }, others.map(outcomeItem)));
      }
      var n = cleared.length || nCleared;
      var heading;
      if (out.success) {
        heading = n ? "Cleared " + n + " stuck lock" + (n === 1 ? "" : "s") + ": all clear now" : "Nothing needed clearing: all clear now";
        if (!outcomes.length) nodes.push(el("p", { text: "No lock of this conversation is held or stale." }));
      } else {
        var stillHeld = still - stillUnsafe;
        var held = stillHeld || (stillUnsafe ? 0 : "Some");
        var left = [];
        if (held) left.push(held + " lock" + (stillHeld === 1 ? " is" : "s are") + " still held");
        if (stillUnsafe) left.push(stillUnsafe + " lock file" + (stillUnsafe === 1 ? " is" : "s are") + " not a regular file");
        heading = (n ? "Cleared " + n + " lock" + (n === 1 ? "" : "s") + ", but " : "Nothing cleared: ") + left.join(" and ");
        nodes.push(
          el("p", {
            className: "ll-muted",
            text: "A safe clear never touches a live holder. Each line says what frees that lock; Refresh shows the status again."
          })
        );
      }
      return { heading: heading, nodes: nodes, kind: out.success ? "ok" : "warn" };
    }

    // ------------------------------------------------------------------ force clear
    var openPanel = null;
    /** Locks a force clear revoked but whose holder still held the file lock: each with
     * the line that says what the status shows now, updated by every refresh. */
    var recheck = [];

    function historyHref(field) {
      return base + "/ui/history?owner=" + encodeURIComponent(conversationId) + "&field=" + encodeURIComponent(field === "" ? "main" : field);
    }

    /** What the fresh status says about a lock a force clear revoked. */
    function updateRecheck() {
      if (!recheck.length || !status) return;
      var when = new Date().toLocaleTimeString();
      recheck.forEach(function (r) {
        var lock = null;
        (status.locks || []).forEach(function (l) {
          if (l.field === r.detail.field) lock = l;
        });
        var name = fieldLabel(r.detail.field);
        var text;
        if (!lock || lock.state === "free") {
          text = "Checked at " + when + ": " + name + " is free now (the holder let go).";
          r.node.className = "ll-recheck ll-recheck--free";
        } else if (lock.token === r.detail.token && lock.state === "stale" && lock.stale_reason === "holder_dead") {
          text =
            "Checked at " + when + ": " + (lock.pid ? "process " + lock.pid : "its holder") +
            " has ended without letting go; the lock is STALE until it is cleared (Clear stuck locks).";
          r.node.className = "ll-recheck ll-recheck--held";
        } else if (lock.token === r.detail.token) {
          text =
            "Checked at " + when + ": still held by " + (lock.pid ? "process " + lock.pid : "its holder") +
            ", asked to let go. Check again in a moment.";
          r.node.className = "ll-recheck ll-recheck--held";
        } else {
          text = "Checked at " + when + ": " + name + " is " + (STATE_LABEL[lock.state] || lock.state) + " by another holder now (token " + lock.token + ").";
          r.node.className = "ll-recheck ll-recheck--held";
        }
        r.node.textContent = text;
      });
    }

    /** The heading, nodes and style of a force clear's answer. A revoked holder that still
     * holds its file lock is said so, never "cleared", and gets the next step. */
    function forceResult(out, label) {
      var nodes = [];
      var details = Array.isArray(out.details) ? out.details : [];
      var failed = out.failed || [];
      var freed = details.filter(function (d) { return !d.revocation_pending; });
      var pending = details.filter(function (d) { return d.revocation_pending; });
      var checks = [];
      if (!details.length && (out.cleared || []).length) {
        // A service without details: the files it names.
        nodes.push(el("ul", { className: "ll-result-cleared" }, out.cleared.map(function (f) { return el("li", null, el("code", { text: f })); })));
      }
      if (freed.length) {
        nodes.push(el("h4", { text: "Force-cleared" }));
        nodes.push(
          el("ul", { className: "ll-outcomes ll-result-cleared" }, freed.map(function (d) {
            return el(
              "li",
              { className: "ll-outcome ll-outcome--force_cleared", "data-field": d.field, "data-outcome": "force_cleared" },
              el(
                "div",
                { className: "ll-outcome-head" },
                el("span", { className: "ll-lock-name", text: fieldLabel(d.field) }),
                el("span", { className: "ll-outcome-word ll-tone--ok", text: "Force-cleared: free now" }),
                el("span", { className: "ll-lock-file", text: d.file || "" })
              ),
              el("p", { className: "ll-outcome-note", text: d.note || "" })
            );
          }))
        );
      }
      if (pending.length) {
        nodes.push(el("h4", { text: "Revoked, still held" }));
        nodes.push(
          el("ul", { className: "ll-outcomes ll-result-revoked" }, pending.map(function (d) {
            var who = d.still_held_by !== null && d.still_held_by !== undefined ? "process " + d.still_held_by : "its holder";
            var line = el("p", { className: "ll-recheck" });
            checks.push({ detail: d, node: line });
            var again = el("button", { type: "button", className: "ll-btn ll-btn-secondary ll-recheck-button" }, "Check again");
            again.addEventListener("click", function () {
              if (busy) return;
              refresh();
            });
            return el(
              "li",
              { className: "ll-outcome ll-outcome--revoked", "data-field": d.field, "data-outcome": "revoked", "data-still-held-by": d.still_held_by },
              el(
                "div",
                { className: "ll-outcome-head" },
                el("span", { className: "ll-lock-name", text: fieldLabel(d.field) }),
                el("span", { className: "ll-outcome-word ll-tone--held", text: "Revoked: still held by " + who }),
                el("span", { className: "ll-lock-file", text: d.file || "" })
              ),
              el("p", { className: "ll-outcome-note", text: d.note || "" }),
              line,
              el(
                "div",
                { className: "ll-actions ll-next-step" },
                again,
                el("a", { className: "ll-link ll-lock-history", href: historyHref(d.field), target: "_blank", rel: "noopener" }, "History of " + fieldLabel(d.field))
              )
            );
          }))
        );
      }
      if (failed.length) {
        nodes.push(el("h4", { text: "Not cleared" }));
        nodes.push(
          el("ul", { className: "ll-result-skipped" }, failed.map(function (f) {
            return el("li", null, el("span", { className: "ll-lock-name", text: fieldLabel(f.field) }), ": " + (f.reason || "failed"));
          }))
        );
      }
      if (out.warning) nodes.push(el("p", { className: "ll-muted", text: out.warning }));
      var heading;
      var kind;
      if (failed.length && !details.length) {
        heading = "Force clear of " + label + " failed";
        kind = "error";
      } else if (pending.length) {
        var p = pending[0];
        heading =
          "Revoked " + label + ", but " +
          (p.still_held_by !== null && p.still_held_by !== undefined ? "process " + p.still_held_by : "its holder") +
          " still holds the file lock";
        kind = "warn";
      } else if (failed.length) {
        heading = "Force clear of " + label + " partly failed";
        kind = "error";
      } else {
        heading = "Force-cleared " + label + ": it is free now";
        kind = "ok";
      }
      return { heading: heading, nodes: nodes, kind: kind, recheck: checks };
    }

    function closeForcePanel(restoreTo) {
      if (openPanel) {
        openPanel.remove();
        openPanel = null;
      }
      if (restoreTo) restoreTo.focus();
    }

    function openForcePanel(li, lock, forceBtn) {
      closeForcePanel();
      var label = fieldLabel(lock.field);
      var expected = lock.field === "" ? ["(main)", "main"] : [lock.field];
      var confirmId = nextId("force-confirm");
      var reasonId = nextId("force-reason");
      var errId = nextId("force-err");
      var typed = el("input", { id: confirmId, type: "text", className: "ll-input ll-force-confirm", autocomplete: "off", spellcheck: "false", "aria-describedby": errId });
      var hintId = nextId("force-reason-hint");
      var reason = el("input", {
        id: reasonId,
        type: "text",
        className: "ll-input ll-force-reason",
        maxlength: String(MAX_REASON_BYTES),
        autocomplete: "off",
        "aria-describedby": hintId
      });
      var hint = el("p", { id: hintId, className: "ll-muted ll-force-reason-hint", "aria-live": "polite" });
      var go = el("button", { type: "submit", className: "ll-btn ll-btn-danger ll-force-go", disabled: true }, "Force clear " + label);
      var cancel = el("button", { type: "button", className: "ll-btn ll-btn-secondary ll-force-cancel" }, "Cancel");
      var err = el("p", { id: errId, className: "ll-error", role: "alert", hidden: true });
      var who = [lock.holder, lock.pid ? "pid " + lock.pid : "", lock.operation].filter(Boolean).join(", ");
      var form = el(
        "form",
        { className: "ll-force-panel", "aria-label": "Force clear " + label },
        el(
          "p",
          null,
          "Force clear ",
          el("strong", { text: label }),
          who ? " (held by " + who + ")" : "",
          "? Its holder is revoked even if it is still working; its later writes are refused by the fencing token."
        ),
        el("label", { for: confirmId }, "Type ", el("code", { text: expected[0] }), " or ", el("code", { text: "FORCE" }), " to confirm"),
        typed,
        el("label", { for: reasonId, text: "Reason (recorded in the history)" }),
        reason,
        hint,
        err,
        el("div", { className: "ll-actions" }, go, cancel)
      );
      function reasonBytes() {
        return utf8Length(reason.value.trim());
      }
      function valid() {
        var t = typed.value.trim();
        var bytes = reasonBytes();
        return (t === "FORCE" || expected.indexOf(t) >= 0) && bytes > 0 && bytes <= MAX_REASON_BYTES;
      }
      function update() {
        var bytes = reasonBytes();
        if (bytes > MAX_REASON_BYTES) {
          hint.textContent =
            "Too long: this reason is " + bytes + " bytes; the service keeps at most " + MAX_REASON_BYTES +
            " (letters outside plain ASCII take 2 to 4 bytes each). Shorten it to force clear.";
          hint.className = "ll-error ll-force-reason-hint";
        } else {
          hint.textContent = "At most " + MAX_REASON_BYTES + " bytes (" + bytes + " used).";
          hint.className = "ll-muted ll-force-reason-hint";
        }
        go.disabled = !valid();
      }
      typed.addEventListener("input", update);
      reason.addEventListener("input", update);
      cancel.addEventListener("click", function () {
        closeForcePanel(forceBtn);
      });
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        if (!valid() || busy) return;
        go.disabled = true;
        err.hidden = true;
        var tokens = {};
        tokens[lock.field] = lock.token;
        setBusy(true);
        api("POST", "/force_clear_locks/" + encodeURIComponent(conversationId), { tokens: tokens, reason: reason.value.trim() }, true)
          .then(function (out) {
            setBusy(false);
            closeForcePanel();
            var r = forceResult(out || {}, label);
            showResult(r.heading, r.nodes, r.kind);
            recheck = r.recheck;
            return refresh().then(function () {
              resultHeading.focus();
            });
          })
          .catch(function (e) {
            setBusy(false);
            err.textContent = describeError(e) + (e && (e.status === 401 || e.status === 403) ? " Check the admin token." : "");
            err.hidden = false;
            update();
            typed.focus();
          });
      });
      update();
      openPanel = form;
      li.appendChild(form);
      typed.focus();
    }

    // ------------------------------------------------------------------ admin token
    function saveAdminToken() {
      var t = adminInput.value.trim();
      if (!t) {
        adminState.textContent = "Type the admin token first.";
        adminInput.focus();
        return;
      }
      adminSave.disabled = true;
      adminState.textContent = "Checking the token\u2026";
      var previous = readStoredToken();
      storeToken(t);
      // A read-only admin call tells whether the token is the admin token.
      api("POST", "/api/v1/sql", { sql: "SELECT 1", max_rows: 1 }, true)
        .then(function () {
          adminInput.value = "";
          updateAdminState();
          if (status) renderStatus(status);
        })
        .catch(function (e) {
          storeToken(previous);
          adminState.textContent = "Token not accepted: " + describeError(e);
        })
        .then(function () {
          adminSave.disabled = false;
        });
    }

    function forgetAdminToken() {
      storeToken("");
      closeForcePanel();
      updateAdminState();
      if (status) renderStatus(status);
      adminInput.focus();
    }

    // ------------------------------------------------------------------ open / close
    function open() {
      var active = document.activeElement;
      returnFocus = active && active !== document.body ? active : button;
      hideConfirm();
      hideResult();
      showError("");
      closeForcePanel();
      updateAdminState();
      if (!dialog.open) {
        if (typeof dialog.showModal === "function") dialog.showModal();
        else dialog.setAttribute("open", "");
      }
      title.focus();
      return refresh();
    }

    function close() {
      if (dialog.open) {
        if (typeof dialog.close === "function") dialog.close();
        else {
          dialog.removeAttribute("open");
          onClosed();
        }
      }
    }

    function onClosed() {
      seq += 1; // ignore answers that arrive after closing
      setBusy(false);
      closeForcePanel();
      hideConfirm();
      var target = returnFocus;
      returnFocus = null;
      if (target && typeof target.focus === "function" && document.contains(target)) target.focus();
    }

    button.addEventListener("click", open);
    closeX.addEventListener("click", close);
    closeBtn.addEventListener("click", close);
    refreshBtn.addEventListener("click", function () {
      hideResult();
      closeForcePanel();
      refresh();
    });
    clearBtn.addEventListener("click", askClear);
    confirmYes.addEventListener("click", doClear);
    confirmNo.addEventListener("click", function () {
      hideConfirm();
      clearBtn.focus();
    });
    adminForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      saveAdminToken();
    });
    adminForget.addEventListener("click", forgetAdminToken);
    dialog.addEventListener("close", onClosed);
    // A click on the backdrop (outside the content box) closes the dialog.
    dialog.addEventListener("click", function (ev) {
      if (ev.target !== dialog) return;
      var r = dialog.getBoundingClientRect();
      var inside = ev.clientX >= r.left && ev.clientX <= r.right && ev.clientY >= r.top && ev.clientY <= r.bottom;
      if (!inside) close();
    });
    // Escape closes the dialog natively (the "cancel" event); browsers without <dialog>:
    dialog.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape" && typeof dialog.showModal !== "function") {
        ev.preventDefault();
        close();
      }
    });

    return {
      open: open,
      close: close,
      refresh: refresh,
      button: button,
      dialog: dialog
    };
  }

  window.LockLedger = { mount: mount, version: "1" };
})();
