// fsm-agent dashboard: our own script, no third-party code. It writes text with textContent
// only (never innerHTML), reads the session's event stream (EventSource: the browser resumes it
// with Last-Event-ID by itself) and the session's detail (armed timers, messages).
"use strict";

(function () {
  var TIMELINE_MAX = 400;

  function text(el, value) { if (el) el.textContent = value; }
  function fmtTime(at) {
    var d = new Date(at * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "backoff";
    if (s < 0) s = 0;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return (s / 3600).toFixed(2) + " h";
  }

  // -- the sessions list: polled (there is no stream of all sessions) -------------------------
  function sessionsPage(table) {
    async function refresh() {
      try {
        var r = await fetch(table.dataset.live, { credentials: "same-origin" });
        if (!r.ok) return;
        var list = await r.json();
        var byId = {};
        list.forEach(function (s) { byId[s.id] = s; });
        table.querySelectorAll("tbody tr").forEach(function (row) {
          var s = byId[row.dataset.session];
          if (!s) { row.remove(); return; }
          text(row.querySelector('[data-role="state"]'), s.state);
          text(row.querySelector('[data-role="connected"]'), s.connected ? "yes" : "no");
          delete byId[s.id];
        });
        Object.keys(byId).forEach(function (id) {
          var s = byId[id], row = document.createElement("tr"), cell = document.createElement("td");
          var a = document.createElement("a");
          row.dataset.session = id;
          a.href = "/ui/sessions/" + encodeURIComponent(id);
          a.textContent = id;
          cell.appendChild(a);
          row.appendChild(cell);
          [[s.state, "state"], [s.connected ? "yes" : "no", "connected"], [s.agent_session], [s.user_id],
           [new Date(s.created_at * 1000).toLocaleString()]].forEach(function (v) {
            var td = document.createElement("td");
            td.textContent = v[0];
            if (v[1]) td.dataset.role = v[1];
            row.appendChild(td);
          });
          table.querySelector("tbody").appendChild(row);
        });
      } catch (e) { /* the next tick tries again */ }
    }
    setInterval(refresh, 2000);
  }

  // -- one session ----------------------------------------------------------------------------
  function sessionPage(boot) {
    var decl = boot.declarations;
    var machines = {};  // name -> {state, at, instance, exact}
    var detail = null, skew = 0;

    function highlight(name) {
      var m = machines[name], article = document.getElementById("machine-" + name);
      if (!article || !m) return;
      article.dataset.state = m.state;
      text(article.querySelector('[data-role="state"]'), m.state);
      text(article.querySelector('[data-role="instance"]'), m.instance || "");
      article.querySelectorAll(".diagram .node").forEach(function (node) {
        var title = node.querySelector("title");
        var on = title !== null && title.textContent === m.state;
        node.classList.toggle("current", on);
      });
      if (name === "session") {
        text(document.getElementById("session-state"), m.state);
        document.body.dataset.sessionState = m.state;
      }
    }

    function setState(name, state, at, instance) {
      if (!decl[name]) return;
      machines[name] = { state: state, at: at, instance: instance };
      highlight(name);
      renderTimers();
    }

    function timerRows(name) {
      var m = machines[name];
      if (!m) return [];
      var now = Date.now() / 1000 + skew;
      if (name === "session" && detail) {
        return Object.keys(detail.timers).map(function (t) {
          return t + ": " + fmtSeconds(detail.timers[t] - now) + " left";
        });
      }
      return (decl[name].timers[m.state] || []).map(function (t) {
        if (t.kind === "state" && t.declared_in === m.state && t.seconds !== null) {
          return t.name + " (" + t.kind + "): ≈ " + fmtSeconds(m.at + t.seconds - now) +
            " left of " + fmtSeconds(t.seconds) + " → " + t.fires;
        }
        var how = t.kind === "silence" ? ", re-armed by " + t.rearmed_by.join(", ") : "";
        return t.name + " (" + t.kind + how + "): " + fmtSeconds(t.seconds) + " → " + t.fires;
      });
    }

    function renderTimers() {
      Object.keys(decl).forEach(function (name) {
        var list = document.querySelector("#machine-" + name + ' [data-role="timers"]');
        if (!list) return;
        var rows = timerRows(name);
        if (!rows.length) rows = [machines[name] ? "none" : "state not known"];
        if (list.childNodes.length === rows.length) {
          rows.forEach(function (r, i) { list.childNodes[i].textContent = r; });
          return;
        }
        list.replaceChildren.apply(list, rows.map(function (r) {
          var li = document.createElement("li");
          li.textContent = r;
          return li;
        }));
      });
    }

    function renderMessages() {
      var body = document.querySelector("#messages tbody");
      body.replaceChildren.apply(body, detail.messages.map(function (m) {
        var tr = document.createElement("tr");
        tr.dataset.message = m.id;
        [m.id, m.state, [m.reason, m.error].filter(Boolean).join(" "), m.prompt.slice(0, 500)]
          .forEach(function (v, i) {
            var td = document.createElement("td");
            td.textContent = v;
            if (i === 1) td.className = "state";
            if (i === 3) td.className = "prompt";
            tr.appendChild(td);
          });
        return tr;
      }));
    }

    var pending = null;
    function refreshDetail() {
      if (pending) return;
      pending = setTimeout(async function () {
        pending = null;
        try {
          var r = await fetch(boot.state, { credentials: "same-origin" });
          if (!r.ok) return;
          detail = await r.json();
          skew = detail.now - Date.now() / 1000;
          renderMessages();
          renderTimers();
        } catch (e) { /* the next event or tick tries again */ }
      }, 150);
    }

    function summary(kind, d) {
      if (kind === "transition") return d.machine + ": " + d.from + " → " + d.to + " (" + d.trigger + ")";
      if (kind === "lifecycle") {
        return d.machine + ": " + (d.source || "·") + " → " + d.state + (d.trigger ? " (" + d.trigger + ")" : "");
      }
      if (kind === "message") return d.id + ": " + d.state + (d.reason ? " " + d.reason : "") + (d.error ? " — " + d.error : "");
      if (kind === "outcome") return d.message_id + ": " + d.status + (d.reason ? " " + d.reason : "");
      if (kind === "event") return "kilo " + ((d.event && d.event.type) || "?");
      return JSON.stringify(d).slice(0, 200);
    }

    var timeline = document.getElementById("timeline");
    function append(id, kind, d) {
      var li = document.createElement("li");
      li.dataset.kind = kind;
      li.dataset.id = id;
      li.textContent = fmtTime(d.at) + "  " + kind + "  " + summary(kind, d);
      timeline.insertBefore(li, timeline.firstChild);
      while (timeline.childNodes.length > TIMELINE_MAX) timeline.removeChild(timeline.lastChild);
    }

    function onEvent(kind) {
      return function (ev) {
        var d = JSON.parse(ev.data);
        append(ev.lastEventId, kind, d);
        if (kind === "transition" && d.machine === "session") {
          setState("session", d.to, d.at, "");
          refreshDetail();
        } else if (kind === "lifecycle") {
          var parts = String(d.machine).split(":");
          setState(parts[0], d.state, d.at, parts.slice(1).join(":"));
        } else if (kind === "message" || kind === "outcome") {
          refreshDetail();
        }
      };
    }

    var status = document.getElementById("stream-status");
    var source = new EventSource(boot.events, { withCredentials: true });
    ["transition", "lifecycle", "message", "outcome", "event", "events_dropped", "ignored", "runtime"]
      .forEach(function (k) { source.addEventListener(k, onEvent(k)); });
    source.onopen = function () { text(status, "live"); document.body.dataset.stream = "live"; };
    source.onerror = function () { text(status, "reconnecting…"); document.body.dataset.stream = "reconnecting"; };
    refreshDetail();
    setInterval(renderTimers, 250);
    setInterval(refreshDetail, 5000);
  }

  var boot = document.getElementById("boot");
  if (boot) sessionPage(JSON.parse(boot.textContent));
  var table = document.getElementById("sessions");
  if (table) sessionsPage(table);
})();
