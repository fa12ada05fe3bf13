// Every page: a one-off notice (?notice=, ?error=) is shown once, not again on reload or when shared.
(function () {
  "use strict";
  var url = new URL(window.location.href);
  if (!url.searchParams.has("notice") && !url.searchParams.has("error")) return;
  url.searchParams.delete("notice");
  url.searchParams.delete("error");
  window.history.replaceState(null, "", url.pathname + (url.search || "") + url.hash);
})();
