// modelshield dashboard: refresh the live parts of the page every few seconds (polling).
// The server renders everything (tables, SVG charts); this script only swaps elements that carry
// data-live by id with the same elements of a freshly fetched copy of the page.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh") || "0");
  if (!(seconds > 0)) {
    return;
  }
  function swap(text) {
    var fresh = new DOMParser().parseFromString(text, "text/html");
    document.querySelectorAll("[data-live]").forEach(function (element) {
      var replacement = fresh.getElementById(element.id);
      if (replacement) {
        element.replaceWith(document.importNode(replacement, true));
      }
    });
  }
  function tick() {
    fetch(window.location.href, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Dashboard-Live": "1" }
    })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          window.location.assign("/dashboard/login?expired=1");
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text !== null) {
          swap(text);
        }
      })
      .catch(function () {
        // a missed refresh is retried at the next tick
      })
      .finally(function () {
        window.setTimeout(tick, seconds * 1000);
      });
  }
  window.setTimeout(tick, seconds * 1000);
})();
