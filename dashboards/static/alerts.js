// Alert tables: ack/resolve without a page reload, and live rows over SSE (/api/v1/alerts/stream).
(function () {
  "use strict";
  var tables = document.querySelectorAll("table.alert-table");
  if (!tables.length) return;
  var SEVERITY = { red: "Urgent", yellow: "Review", info: "Info" };
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function cap(s) { s = String(s || ""); return s.charAt(0).toUpperCase() + s.slice(1); }
  function badge(cls, text) { return el("span", "badge " + cls, text); }

  function actionForm(id, action, label, secondary) {
    var f = el("form");
    f.method = "post";
    f.action = "/alerts/" + id + "/" + action;
    f.dataset.action = action;
    var t = el("input");
    t.type = "hidden"; t.name = "csrf_token"; t.value = csrf;
    var b = el("button", "btn small" + (secondary ? " secondary" : ""), label);
    b.type = "submit";
    b.appendChild(el("span", "visually-hidden", " alert " + id));
    f.appendChild(t); f.appendChild(b);
    return f;
  }

  function fillActions(td, a) {
    td.textContent = "";
    if (a.state === "open") td.appendChild(actionForm(a.alert_id, "ack", "Acknowledge", false));
    if (a.state !== "resolved") td.appendChild(actionForm(a.alert_id, "resolve", "Resolve", true));
  }

  function cell(tr, label, child, cls) {
    var td = el("td", cls);
    td.dataset.label = label;
    if (typeof child === "string") td.textContent = child; else if (child) td.appendChild(child);
    tr.appendChild(td);
    return td;
  }

  function deviceLink(a) {
    var link = el(a.device_id ? "a" : "span", "", a.device_label);
    if (a.device_id) link.href = "/devices/" + encodeURIComponent(a.device_id);
    return link;
  }

  // A vendor's stream view names the device by serial, not by the id its pages link to: the page's
  // own row of the alert has it.
  function linkDevice(td, alertId) {
    fetch("/alerts/" + encodeURIComponent(alertId) + "/row", {
      credentials: "same-origin", headers: { Accept: "application/json" }
    }).then(function (resp) {
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.json();
    }).then(function (row) {
      td.textContent = "";
      td.appendChild(deviceLink(normalise(row)));
    }).catch(function () { /* the serial stays, without a link */ });
  }

  function buildRow(table, a) {
    var tr = el("tr");
    tr.id = table.dataset.device ? "" : "alert-" + a.alert_id;
    tr.dataset.alert = a.alert_id;
    cell(tr, "Severity", badge(a.severity, SEVERITY[a.severity] || a.severity));
    var title = el("div");
    title.appendChild(el("strong", "", a.title));
    if (a.detail) title.appendChild(el("div", "muted small", a.detail));
    cell(tr, "Alert", title);
    if (!table.dataset.device) {
      var td = cell(tr, "Device", deviceLink(a));
      if (!a.device_id) linkDevice(td, a.alert_id);
    }
    cell(tr, "Class", cap(a.alert_class));
    var time = el("time", "", "just now");
    time.dateTime = a.opened_at || "";
    cell(tr, "Since", time);
    if (window.pulsewireLocalise) window.pulsewireLocalise(tr);
    cell(tr, "State", null, "state-cell");
    if (table.dataset.canAct === "true") cell(tr, "Actions", el("div", "actions"), "act-cell");
    return tr;
  }

  function applyState(tr, a) {
    tr.dataset.state = a.state;
    var sc = tr.querySelector(".state-cell");
    sc.textContent = "";
    sc.appendChild(badge(a.state, cap(a.state)));
    var act = tr.querySelector("td.act-cell .actions");
    if (act) fillActions(act, a);
  }

  function wanted(table, a) {
    if (table.dataset.device && table.dataset.device !== a.device_id) return false;
    if (a.alert_id === undefined || !a.state) return false;
    var f = table.dataset.filter || "all";
    return f === "all" || f === a.state;
  }

  // Upsert one alert everywhere it belongs; rows already shown stay and change state in place.
  function upsert(a) {
    tables.forEach(function (table) {
      var tr = table.querySelector('tr[data-alert="' + a.alert_id + '"]');
      if (!tr) {
        if (!wanted(table, a)) return;
        tr = buildRow(table, a);
        table.tBodies[0].insertBefore(tr, table.tBodies[0].firstChild);
        var wrap = table.closest(".table-wrap");
        wrap.hidden = false;
        var empty = wrap.parentNode.querySelector(".empty");
        if (empty) empty.hidden = true;
      }
      applyState(tr, a);
      tr.classList.remove("flash");
      void tr.offsetWidth; // restart the highlight animation
      tr.classList.add("flash");
    });
  }

  // Normalise what the stream or the API sends into the fields the rows use.
  function normalise(raw) {
    var a = raw.alert || raw;
    return {
      alert_id: a.alert_id !== undefined ? a.alert_id : a.id,
      device_id: a.device_id || (a.device && a.device.device_id) || "",
      device_label: a.device_id || (a.device && (a.device.device_id || a.device.serial)) || "",
      severity: a.severity, state: a.state,
      title: a.title || a.summary || a.rule_name || a.rule || "Alert",
      detail: a.detail || a.message || "",
      alert_class: a.alert_class || a["class"] || a.klass || "",
      opened_at: a.opened_at || a.created_at || ""
    };
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.dataset || !form.dataset.action || !form.closest("table.alert-table")) return;
    ev.preventDefault();
    var buttons = form.closest(".actions").querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { Accept: "application/json" }
    }).then(function (resp) {
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.json();
    }).then(function (body) {
      upsert(normalise(body));
    }).catch(function () {
      buttons.forEach(function (b) { b.disabled = false; });
      window.alert("The alert could not be updated. Please reload the page and try again.");
    });
  });

  var live = document.getElementById("live");
  function setLive(on, text) {
    if (!live) return;
    live.classList.toggle("on", on);
    live.querySelector(".text").textContent = text;
  }
  if (typeof EventSource === "undefined") { setLive(false, "Live updates unavailable"); return; }
  var source = new EventSource("/api/v1/alerts/stream");
  function onEvent(ev) {
    try { upsert(normalise(JSON.parse(ev.data))); } catch (e) { /* a keep-alive or foreign event */ }
  }
  source.addEventListener("open", function () { setLive(true, "Live"); document.body.dataset.live = "on"; });
  source.addEventListener("error", function () { setLive(false, "Reconnecting…"); });
  // The stream names each event by what happened to the alert; the data is the alert as we may see it.
  ["message", "opened", "updated", "acknowledged", "escalated", "resolved", "reopened"].forEach(function (name) {
    source.addEventListener(name, onEvent);
  });
})();
