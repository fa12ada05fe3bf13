// Every page: a one-off notice (?notice=, ?error=) is shown once, not again on reload or when shared.
(function () {
  "use strict";
  var url = new URL(window.location.href);
  if (!url.searchParams.has("notice") && !url.searchParams.has("error")) return;
  url.searchParams.delete("notice");
  url.searchParams.delete("error");
  window.history.replaceState(null, "", url.pathname + (url.search || "") + url.hash);
})();

// Times in the viewer's own time zone. The server writes every time in UTC, which stays the answer
// without JavaScript; here `<time datetime>` texts (and the titles of relative ones) are rewritten in
// the browser's zone, and a form's `datetime-local` field is sent as the instant it means there.
(function () {
  "use strict";
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  var isUtc = /^(Etc\/)?(UTC|UCT|GMT|Universal|Zulu)$/.test(zone);
  var full = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "2-digit", month: "short", year: "numeric",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short"
  });

  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      if (t.dataset.local === "datetime") t.textContent = full.format(d);
      else t.title = full.format(d);
    });
    root.querySelectorAll("[data-tz]").forEach(function (s) { s.textContent = isUtc ? "UTC" : zone; });
  }
  localise(document);
  window.pulsewireLocalise = localise; // for rows that arrive later (alerts.js)

  // Capture phase: runs before the form leaves. A value without a zone is local time to `Date`.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.querySelectorAll) return;
    form.querySelectorAll('input[type="datetime-local"][name]').forEach(function (input) {
      var d = new Date(input.value);
      if (!input.value || isNaN(d.getTime())) return;
      var instant = document.createElement("input");
      instant.type = "hidden";
      instant.name = input.name;
      instant.value = d.toISOString();
      input.removeAttribute("name");
      form.appendChild(instant);
    });
  }, true);
})();
