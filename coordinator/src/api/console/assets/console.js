// Flotilla console: small enhancements over server-rendered pages, each optional.
// - [data-live=N]: re-fetched every N seconds and swapped in place (not while you type in it,
//   nor while the tab is hidden).
// - form[data-confirm]: asks before posting.
// - [data-events=URL]: a list that events of the kinds in data-kinds (Server-Sent Events from
//   URL) are added to as they happen, newest first, 50 at most.
"use strict";
(function () {
  function refresh(el) {
    if (document.hidden || el.contains(document.activeElement) && document.activeElement !== document.body) return;
    fetch(location.href, { headers: { "X-Flotilla-Live": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(el.id);
        if (fresh) el.innerHTML = fresh.innerHTML;
      })
      .catch(function () { /* the next tick tries again */ });
  }
  document.querySelectorAll("[data-live]").forEach(function (el) {
    var seconds = Math.max(1, parseInt(el.getAttribute("data-live"), 10) || 5);
    setInterval(function () { refresh(el); }, seconds * 1000);
  });
  document.querySelectorAll("[data-events]").forEach(function (list) {
    if (!window.EventSource) return;
    var source = new EventSource(list.getAttribute("data-events"));
    (list.getAttribute("data-kinds") || "").split(",").forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        var ev;
        try { ev = JSON.parse(e.data); } catch (_) { return; }
        var li = document.createElement("li");
        li.setAttribute("data-kind", kind);
        var when = document.createElement("time");
        when.textContent = new Date(ev.at_unix_ms).toLocaleTimeString();
        var what = document.createElement("span");
        what.className = "badge";
        what.textContent = kind.replace(/_/g, " ");
        var who = document.createElement("a");
        if (ev.instance_uid) {
          who.href = "/agents/" + encodeURIComponent(ev.instance_uid);
          who.textContent = ((ev.attributes || {})["service.name"] || "") + " " + ev.instance_uid;
        } else {
          who.href = "/rollouts/" + encodeURIComponent(ev.rollout || "");
          who.textContent = "rollout " + ev.rollout + " (" + ev.config + ")";
        }
        li.append(when, " ", what, " ", who, ev.detail || ev.reason ? " " + (ev.detail || ev.reason) : "");
        list.insertBefore(li, list.firstChild);
        while (list.children.length > 50) list.removeChild(list.lastChild);
      });
    });
  });
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });
})();
