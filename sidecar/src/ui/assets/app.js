// Gossamer UI: keeps the server-rendered page current. The page works
// without this script; with it, every `change` event from /v1/events
// fetches the live part again (/ui?fragment=main) and swaps it in.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var live = document.getElementById("live");
  var root = document.documentElement;
  // Set once per page load: a reload would change it (tests read it).
  root.setAttribute("data-loaded-at", String(Date.now()));
  root.setAttribute("data-updates", "0");
  if (!status || !live || typeof EventSource === "undefined") {
    return;
  }
  var updates = 0;
  var busy = false;
  var again = false;
  function say(state, text) {
    status.setAttribute("data-state", state);
    status.textContent = text;
  }
  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch("/ui?fragment=main", { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        updates += 1;
        root.setAttribute("data-updates", String(updates));
        say("live", "live · updated " + new Date().toLocaleTimeString());
      })
      .catch(function (error) {
        say("error", "update failed: " + error.message);
      })
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }
  var events = new EventSource("/v1/events");
  events.addEventListener("change", refresh);
  events.onopen = function () {
    say("live", "live");
  };
  events.onerror = function () {
    say("reconnecting", "connection lost: reconnecting");
  };
})();
