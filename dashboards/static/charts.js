// Device page: one uPlot chart per metric, fetched from the readings API with the session cookie.
(function () {
  "use strict";
  var section = document.getElementById("charts");
  if (!section || typeof uPlot === "undefined") return;
  var deviceId = section.dataset.device;
  // Bucket sizes keep every range between ~140 and ~180 points: readable, and cheap to fetch.
  var RANGES = {
    "24h": { seconds: 86400, bucket: "10m" },
    "7d": { seconds: 7 * 86400, bucket: "1h" },
    "30d": { seconds: 30 * 86400, bucket: "4h" }
  };
  var plots = {};

  function figures() { return section.querySelectorAll("figure.chart"); }

  function setState(fig, text) {
    var el = fig.querySelector(".state");
    el.textContent = text;
    el.hidden = !text;
  }

  function readingsUrl(metric, range) {
    var end = new Date();
    var start = new Date(end.getTime() - range.seconds * 1000);
    var q = new URLSearchParams({
      metric: metric, start: start.toISOString(), end: end.toISOString(), bucket: range.bucket, agg: "avg"
    });
    return "/api/v1/devices/" + encodeURIComponent(deviceId) + "/readings?" + q.toString();
  }

  // The API answers {series: [{metric, unit, points: [{ts, value, n}]}]}; one series per request here.
  function toColumns(body) {
    var series = (body.series || [])[0];
    var xs = [], ys = [];
    (series ? series.points : []).forEach(function (r) {
      var t = Date.parse(r.ts);
      if (!isNaN(t) && r.value !== null) { xs.push(t / 1000); ys.push(r.value); }
    });
    return [xs, ys];
  }

  function draw(fig, data, range) {
    var metric = fig.dataset.metric;
    var holder = fig.querySelector(".plot");
    var width = Math.max(holder.clientWidth, 260);
    var now = Date.now() / 1000;
    var opts = {
      width: width, height: 200,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: [now - range.seconds, now] } },
      axes: [
        { stroke: "#566173", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#dde2ea" } },
        { stroke: "#566173", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#dde2ea" }, size: 56 }
      ],
      series: [{}, { label: metric, stroke: "#0b5cad", width: 2, fill: "rgba(11, 92, 173, 0.08)", spanGaps: false,
                     points: { show: data[0].length < 40 } }]
    };
    if (plots[metric]) plots[metric].destroy();
    holder.textContent = "";
    plots[metric] = new uPlot(opts, data, holder);
  }

  function load(fig, rangeKey) {
    var range = RANGES[rangeKey];
    setState(fig, "Loading…");
    fetch(readingsUrl(fig.dataset.metric, range), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.json();
      })
      .then(function (body) {
        var data = toColumns(body);
        draw(fig, data, range);
        setState(fig, data[0].length ? "" : "No readings in this range.");
        fig.dataset.points = String(data[0].length);
      })
      .catch(function (err) { setState(fig, "Could not load readings (" + err.message + ")."); });
  }

  function select(rangeKey) {
    section.querySelectorAll("[data-range]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.range === rangeKey));
    });
    figures().forEach(function (fig) { load(fig, rangeKey); });
  }

  section.querySelectorAll("[data-range]").forEach(function (b) {
    b.addEventListener("click", function () { select(b.dataset.range); });
  });
  // Follow the container's width (phone rotation, window resize) without refetching.
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(function () {
      figures().forEach(function (fig) {
        var p = plots[fig.dataset.metric];
        var w = fig.querySelector(".plot").clientWidth;
        if (p && w > 0 && Math.abs(p.width - w) > 4) p.setSize({ width: w, height: 200 });
      });
    }).observe(section);
  }
  select("24h");
})();
