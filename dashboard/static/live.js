// Live updates without a page reload: every element with data-live is re-rendered from the
// server (the same template, ?partial=1) every 2 s while the tab is visible. The server's
// templates escape every event string; this file never builds markup from data itself.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var regions = document.querySelectorAll("[data-live]");
  regions.forEach(function (el) {
    var busy = false;
    var last = null;
    function tick() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(el.getAttribute("data-live"), {credentials: "same-origin", headers: {"X-Haul-Live": "1"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null && html !== last) {
            last = html;
            el.innerHTML = html;
            el.setAttribute("data-updated", String(Date.now()));
          }
        })
        .catch(function () { /* offline for a moment: the next tick tries again */ })
        .then(function () { busy = false; });
    }
    setInterval(tick, INTERVAL_MS);
  });
})();
