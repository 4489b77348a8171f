// taskhook dashboard: live counters, relative times, confirmations. No framework, no build.
// Loaded as a file (the CSP allows no inline script); every page works without it.
"use strict";

(function () {
  function relative(iso) {
    var then = Date.parse(iso);
    if (isNaN(then)) return null;
    var s = Math.round((Date.now() - then) / 1000);
    var future = s < 0;
    s = Math.abs(s);
    var text;
    if (s < 45) text = s + "s";
    else if (s < 3600) text = Math.round(s / 60) + " min";
    else if (s < 86400) text = Math.round(s / 3600) + " h";
    else if (s < 86400 * 45) text = Math.round(s / 86400) + " d";
    else return new Date(then).toLocaleDateString();
    return future ? "in " + text : text + " ago";
  }

  function refreshTimes(root) {
    var nodes = (root || document).querySelectorAll("time[data-relative]");
    for (var i = 0; i < nodes.length; i++) {
      var text = relative(nodes[i].getAttribute("datetime"));
      if (text) nodes[i].textContent = text;
    }
  }

  function live(section) {
    var url = section.getAttribute("data-live");
    var every = Math.max(1, parseFloat(section.getAttribute("data-refresh")) || 5) * 1000;
    var updated = document.querySelector("[data-updated]");
    function tick() {
      if (document.hidden) return schedule();
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 401) {
            window.location.assign("/ui/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
            throw new Error("signed out");
          }
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then(function (data) {
          Object.keys(data.cards).forEach(function (name) {
            var card = section.querySelector('[data-card="' + name + '"]');
            if (!card) return;
            var shown = data.cards[name];
            var value = card.querySelector("[data-counter]");
            var sub = card.querySelector("[data-sub]");
            card.classList.toggle("alarm", !!shown.alarm);
            if (sub) sub.textContent = shown.sub;
            if (value && value.textContent !== shown.value) {
              value.textContent = shown.value;
              card.classList.remove("changed");
              void card.offsetWidth; // restart the animation
              card.classList.add("changed");
            }
          });
          if (updated) {
            updated.setAttribute("datetime", data.at);
            updated.textContent = relative(data.at) || data.at;
          }
          section.classList.remove("stale");
        })
        .catch(function () { section.classList.add("stale"); })
        .then(schedule);
    }
    function schedule() { window.setTimeout(tick, every); }
    schedule();
  }

  function confirmations() {
    var forms = document.querySelectorAll("form[data-confirm]");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("submit", function (event) {
        if (!window.confirm(this.getAttribute("data-confirm"))) event.preventDefault();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes();
    window.setInterval(refreshTimes, 30000);
    var section = document.querySelector("[data-live]");
    if (section) live(section);
    confirmations();
  });
})();
