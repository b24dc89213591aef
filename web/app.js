/* lockledger chat page: a small chat whose Settings modal carries the Lock Status widget
 * (dogfooding /ui/widget/lockledger.js). In demo mode (`lockledger serve --demo`) replies
 * stream from POST /demo/chat/<id> while the service holds the conversation's messages and
 * message_operations locks as leases; Stop aborts the fetch, which releases them.
 * Untrusted text is only ever set with textContent. */
(function () {
  "use strict";

  var ID_RE = /^[A-Za-z0-9@+_][A-Za-z0-9@+_.-]{0,199}$/;

  var conversations = [
    {
      id: "demo-trip-planning",
      title: "Trip planning",
      messages: [{ role: "assistant", text: "Where would you like to go? Ask me anything." }]
    },
    {
      id: "demo-code-review",
      title: "Code review",
      messages: [{ role: "assistant", text: "Paste the diff you want reviewed." }]
    },
    {
      id: "demo-recipes",
      title: "Recipes",
      messages: [{ role: "assistant", text: "What is in your fridge today?" }]
    }
  ];

  var state = { currentId: conversations[0].id, demo: false, demoKnown: false };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function current() {
    for (var i = 0; i < conversations.length; i++) {
      if (conversations[i].id === state.currentId) return conversations[i];
    }
    return conversations[0];
  }

  function setStatus(text) {
    $("chat-status").textContent = text || "";
  }

  // ------------------------------------------------------------------ conversations
  function renderConversationList() {
    var list = $("conversation-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    conversations.forEach(function (conv) {
      var li = el("li");
      var b = el("button", "conversation-item");
      b.type = "button";
      b.setAttribute("data-conversation-id", conv.id);
      if (conv.id === state.currentId) b.setAttribute("aria-current", "true");
      b.appendChild(el("span", "conversation-name", conv.title));
      b.appendChild(el("span", "conversation-id", conv.id));
      if (conv.controller) b.appendChild(el("span", "conversation-live", "streaming"));
      b.addEventListener("click", function () {
        select(conv.id);
      });
      li.appendChild(b);
      list.appendChild(li);
    });
  }

  function select(id) {
    state.currentId = id;
    var url = new URL(window.location.href);
    url.searchParams.set("conversation", id);
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    renderConversationList();
    renderMessages();
    updateButtons();
  }

  function addConversation(id, title) {
    var conv = { id: id, title: title || id, messages: [] };
    conversations.push(conv);
    return conv;
  }

  // ------------------------------------------------------------------ messages
  function messageNode(msg) {
    var li = el("li", "msg msg--" + msg.role);
    li.appendChild(el("span", "msg-role", msg.role === "user" ? "You" : msg.role === "assistant" ? "Assistant" : "Note"));
    var text = el("div", "msg-text", msg.text);
    li.appendChild(text);
    var meta = el("span", "msg-meta");
    li.appendChild(meta);
    msg.node = li;
    msg.textNode = text;
    msg.metaNode = meta;
    updateMessage(msg);
    return li;
  }

  function updateMessage(msg) {
    if (!msg.node) return;
    msg.textNode.textContent = msg.text;
    var meta = "";
    if (msg.streaming) meta = "streaming\u2026 (locks held)";
    else if (msg.stopped) meta = "stopped — locks released";
    else if (msg.error) meta = msg.error;
    msg.metaNode.textContent = meta;
    msg.node.setAttribute("aria-busy", msg.streaming ? "true" : "false");
    msg.node.classList.toggle("msg--error", !!msg.error);
  }

  function renderMessages() {
    var conv = current();
    $("conversation-title").textContent = conv.title;
    var list = $("messages");
    while (list.firstChild) list.removeChild(list.firstChild);
    conv.messages.forEach(function (m) {
      list.appendChild(messageNode(m));
    });
    scrollToEnd();
  }

  function appendMessage(conv, msg) {
    conv.messages.push(msg);
    if (conv.id === state.currentId) {
      $("messages").appendChild(messageNode(msg));
      scrollToEnd();
    } else {
      msg.node = null;
    }
  }

  function scrollToEnd() {
    var list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  function updateButtons() {
    var conv = current();
    var streaming = !!conv.controller;
    $("send-button").disabled = streaming;
    $("stop-button").disabled = !streaming;
  }

  // ------------------------------------------------------------------ sending
  function errorMessage(resp, text) {
    try {
      var data = JSON.parse(text);
      if (data && data.error && data.error.message) return data.error.message;
    } catch (e) {
      /* not JSON */
    }
    return "the service answered " + resp.status;
  }

  function send(text) {
    var conv = current();
    appendMessage(conv, { role: "user", text: text });
    if (!state.demo) {
      appendMessage(conv, {
        role: "note",
        text: "Demo mode is off, so there is no streamed reply. Start the service with `lockledger serve --demo` to stream replies that hold this conversation's locks."
      });
      return;
    }
    var reply = { role: "assistant", text: "", streaming: true };
    appendMessage(conv, reply);
    var controller = new AbortController();
    conv.controller = controller;
    renderConversationList();
    updateButtons();
    setStatus("Streaming a reply: the messages and message_operations locks of " + conv.id + " are held. Stop releases them.");

    var decoder = new TextDecoder();
    fetch("/demo/chat/" + encodeURIComponent(conv.id), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/plain" },
      body: JSON.stringify({ message: text }),
      signal: controller.signal,
      cache: "no-store"
    })
      .then(function (resp) {
        if (!resp.ok || !resp.body) {
          return resp.text().then(function (t) {
            throw new Error(errorMessage(resp, t));
          });
        }
        var reader = resp.body.getReader();
        function pump() {
          return reader.read().then(function (r) {
            if (r.done) {
              reply.text += decoder.decode();
              return;
            }
            reply.text += decoder.decode(r.value, { stream: true });
            if (reply.node) {
              reply.textNode.textContent = reply.text;
              scrollToEnd();
            }
            return pump();
          });
        }
        return pump();
      })
      .then(
        function () {
          setStatus("Reply finished; the locks were released.");
        },
        function (e) {
          if (e && e.name === "AbortError") {
            reply.stopped = true;
            setStatus("Stopped: the stream was cancelled and its locks released.");
          } else {
            reply.error = "Reply failed: " + ((e && e.message) || e);
            setStatus(reply.error);
          }
        }
      )
      .then(function () {
        reply.streaming = false;
        conv.controller = null;
        updateMessage(reply);
        renderConversationList();
        updateButtons();
      });
  }

  function stop() {
    var conv = current();
    if (conv.controller) conv.controller.abort();
  }

  // ------------------------------------------------------------------ settings modal
  var settingsReturnFocus = null;

  function openSettings() {
    var d = $("settings-modal");
    settingsReturnFocus = document.activeElement;
    if (!d.open) d.showModal();
    $("settings-title").setAttribute("tabindex", "-1");
    $("settings-title").focus();
  }

  function closeSettings() {
    var d = $("settings-modal");
    if (d.open) d.close();
  }

  function simulate(kind) {
    var conv = current();
    var out = $("demo-tools-status");
    out.textContent = "Working\u2026";
    fetch("/demo/simulate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ conversation_id: conv.id, kind: kind }),
      cache: "no-store"
    })
      .then(function (resp) {
        return resp.text().then(function (t) {
          if (!resp.ok) throw new Error(errorMessage(resp, t));
          return JSON.parse(t);
        });
      })
      .then(function (data) {
        var words = {
          crashed: "A holder of memory was started and killed: Lock Status shows memory STALE (holder dead).",
          hung: "A frozen holder of all was started (pid " + data.pid + "): HELD now, STALE (held too long) after about 15 s.",
          external: "An external process holds uploaded_documents_list (pid " + data.pid + "): HELD, not clearable.",
          end: "Ended " + data.ended + " simulated holder(s)."
        };
        out.textContent = words[kind] || "Done.";
      })
      .catch(function (e) {
        out.textContent = "Could not simulate: " + e.message;
      });
  }

  // ------------------------------------------------------------------ start
  function detectDemo() {
    return fetch("/demo/status", { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (resp) {
        return resp.ok;
      })
      .catch(function () {
        return false;
      })
      .then(function (on) {
        state.demo = on;
        state.demoKnown = true;
        document.body.setAttribute("data-demo", on ? "on" : "off");
        $("demo-tools").hidden = !on;
        var note = $("mode-note");
        note.textContent = on
          ? "Demo mode: replies stream while this conversation's messages and message_operations locks are held. Open Settings \u2192 Lock Status to watch them; Stop releases them."
          : "Demo mode is off: replies are not streamed. Settings \u2192 Lock Status still shows this conversation's real locks. Run `lockledger serve --demo` for streaming and simulated stuck holders.";
        note.hidden = false;
      });
  }

  function init() {
    var params = new URLSearchParams(window.location.search);
    var wanted = params.get("conversation");
    if (wanted && ID_RE.test(wanted)) {
      var known = conversations.some(function (c) { return c.id === wanted; });
      if (!known) addConversation(wanted, wanted);
      state.currentId = wanted;
    }

    renderConversationList();
    renderMessages();
    updateButtons();

    $("composer").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = $("composer-input");
      var text = input.value.trim();
      if (!text || current().controller) return;
      input.value = "";
      send(text);
    });
    $("composer-input").addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("stop-button").addEventListener("click", stop);

    $("settings-open-button").addEventListener("click", openSettings);
    $("settings-close-x").addEventListener("click", closeSettings);
    $("settings-close-button").addEventListener("click", closeSettings);
    $("settings-modal").addEventListener("close", function () {
      var t = settingsReturnFocus;
      settingsReturnFocus = null;
      if (t && t.focus && document.contains(t)) t.focus();
    });
    $("settings-delete-last-button").addEventListener("click", function () {
      var conv = current();
      var last = conv.messages[conv.messages.length - 1];
      if (!last || last.streaming) return;
      conv.messages.pop();
      renderMessages();
      setStatus("Deleted the last message.");
    });
    $("settings-new-conversation-button").addEventListener("click", function () {
      var n = conversations.length + 1;
      var id = "conv-" + Date.now().toString(36) + "-" + Math.floor(Math.random() * 1e6).toString(36);
      addConversation(id, "Conversation " + n);
      closeSettings();
      select(id);
      $("composer-input").focus();
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-simulate]"), function (b) {
      b.addEventListener("click", function () {
        simulate(b.getAttribute("data-simulate"));
      });
    });

    // Closing the tab aborts running streams (the browser would too); the service then
    // drops the response stream and releases the leases.
    window.addEventListener("pagehide", function () {
      conversations.forEach(function (c) {
        if (c.controller) c.controller.abort();
      });
    });

    // Dogfooding: the same drop-in widget any chat app would use.
    if (window.LockLedger) {
      window.lockStatus = window.LockLedger.mount({
        baseUrl: "",
        container: $("settings-quick-actions"),
        getConversationId: function () {
          return state.currentId;
        },
        // The user token typed on the history page (same tab), when the service needs one.
        token: function () {
          try {
            return window.sessionStorage.getItem("lockledger.userToken") || "";
          } catch (e) {
            return "";
          }
        }
      });
    }

    detectDemo();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
