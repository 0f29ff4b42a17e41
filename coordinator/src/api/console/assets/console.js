// Flotilla console: small enhancements over server-rendered pages, each optional.
// - [data-live=N]: re-fetched every N seconds and swapped in place (not while you type in it,
//   nor while the tab is hidden).
// - form[data-confirm]: asks before posting.
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
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });
})();
