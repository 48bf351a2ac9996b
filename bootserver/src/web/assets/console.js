// The console's pages: fill the tables from the admin API's JSON, send every action to that
// API (with the session's CSRF token), and fetch again when /api/events says something changed.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const page = document.body.dataset.page;

async function api(method, path, body) {
  const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = csrf;
    opts.body = JSON.stringify(body || {});
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!r.ok) throw new Error((data && data.error ? data.error : "failed") + " (" + r.status + ")");
  return data;
}

function status(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "error" : "";
}

// Runs an action and reports how it went; the events bring the new state.
async function act(what, method, path, body) {
  try {
    await api(method, path, body);
    status(what + ": done");
  } catch (e) {
    status(what + ": refused: " + e.message, true);
  }
  refresh();
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function button(label, onclick, cls) { return el("button", { type: "button", class: cls || "", onclick }, label); }

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}

function ago(secs) {
  if (secs < 90) return secs + " s ago";
  if (secs < 5400) return Math.round(secs / 60) + " min ago";
  return Math.round(secs / 3600) + " h ago";
}
const now = () => Math.floor(Date.now() / 1000);

const pages = {
  async pcs() {
    const [clients, boots] = await Promise.all([api("GET", "/api/clients"), api("GET", "/api/boots")]);
    const stages = new Map(boots.map((b) => [b.mac, b]));
    fill("pcs", clients.map((c) => {
      const b = stages.get(c.mac);
      const stageCell = el("td", { class: "stages" });
      if (b) {
        for (const s of b.current) stageCell.append(el("span", { class: "stage" }, s.stage || s.name));
        if (b.stuck) stageCell.append(el("span", { class: "stuck" }, b.stuck));
      }
      const e = c.enrolment;
      const enrol = el("td", { class: "enrolment" }, e ? e.state : "-");
      if (e && e.state === "pending") {
        enrol.append(" ", el("code", {}, e.code || ""), " ",
          button("Approve", () => act("approve " + c.mac, "POST", "/api/clients/" + c.mac + "/approve", {}), "approve"),
          button("Deny", () => act("deny " + c.mac, "POST", "/api/clients/" + c.mac + "/deny", {}), "deny"));
      }
      const actions = el("td", {},
        button("Reboot", () => act("reboot " + c.mac, "POST", "/api/clients/" + c.mac + "/action", { action: "reboot" })),
        button("Power off", () => act("power off " + c.mac, "POST", "/api/clients/" + c.mac + "/action", { action: "poweroff" })),
        button("Message", () => {
          const text = window.prompt("Message for " + c.mac);
          if (text) act("message to " + c.mac, "POST", "/api/clients/" + c.mac + "/action", { action: "message", text });
        }));
      return el("tr", { "data-mac": c.mac }, el("td", {}, c.mac), el("td", { class: "state" }, c.state),
        el("td", {}, c.connected ? "yes" : "no"), enrol, el("td", {}, c.address), stageCell,
        el("td", {}, ago(now() - c.last_seen)), actions);
    }));
  },

  async overview() {
    const [hosts, vms, level, decisions, sessions] = await Promise.all(
      ["/api/hosts", "/api/vms", "/api/level", "/api/decisions", "/api/sessions"].map((p) => api("GET", p)));
    const refusals = decisions.filter((d) => (d.decision.actions || []).some((a) => a.action === "refuse")).length;
    const m = level.level == null ? "full" : level.level + " (U_m = " + level.level_mib + " MiB)";
    document.getElementById("summary").replaceChildren(
      el("div", { class: "figure" }, el("b", {}, String(level.users)), " people with a desktop"),
      el("div", { class: "figure" }, el("b", {}, String(sessions.length)), " viewers connected"),
      el("div", { class: "figure" }, "level m ", el("b", {}, m)),
      el("div", { class: "figure" }, el("b", {}, String(refusals)), " refusals among the latest decisions"));
    const levels = level.levels_mib;
    document.getElementById("hosts").replaceChildren(...hosts.map((h) => {
      const bar = el("div", { class: "bar" });
      let used = 0;
      for (const v of vms.filter((v) => v.host === h.name)) {
        used += v.memory_mib;
        bar.append(el("span", { class: "vm level" + v.level, style: "width:" + (100 * v.memory_mib / h.capacity_mib) + "%",
          title: v.user + ": " + v.memory_mib + " MiB, level " + v.level }, v.user));
      }
      return el("div", { class: "host" + (h.up ? "" : " down") },
        el("div", { class: "name" }, h.name + (h.up ? "" : " (down)") + ": " + used + " of " + h.capacity_mib + " MiB, " + h.vms + " VMs"),
        bar);
    }), el("p", { class: "legend" }, "Levels: " + levels.map((l, i) => i + " = " + l + " MiB").join(", ")));
    fill("decisions", decisions.slice(-10).reverse().map((d) => el("tr", {},
      el("td", {}, new Date(d.at_ms).toLocaleTimeString()), el("td", {}, d.decision.event.event + " " + (d.decision.event.user || d.decision.event.host || "")),
      el("td", {}, [d.decision.summary, ...(d.decision.actions || []).map((a) => a.reason || a.message)].filter(Boolean).join(" · ")), el("td", {}, d.steps.map((s) => s.action).join(", ")))));
  },

  async people() {
    const users = await api("GET", "/api/users");
    fill("users", users.map((u) => {
      const path = "/api/users/" + u.name;
      const pw = el("input", { type: "password", placeholder: "new password" });
      const template = el("input", { value: u.template || "", placeholder: "default" });
      return el("tr", { "data-user": u.name }, el("td", {}, u.name), el("td", {}, u.role), el("td", {}, u.enabled ? "yes" : "no"),
        el("td", {}, template), el("td", {}, u.desktop),
        el("td", {},
          button(u.enabled ? "Disable" : "Enable", () => act((u.enabled ? "disable " : "enable ") + u.name, "PATCH", path, { enabled: !u.enabled })),
          button(u.desktop === "one-time" ? "Make persistent" : "Make one-time",
            () => act("desktop of " + u.name, "PATCH", path, { desktop: u.desktop === "one-time" ? "persistent" : "one-time" })),
          button("Set template", () => act("template of " + u.name, "PATCH", path, { template: template.value || null })),
          pw, button("Reset password", () => act("password of " + u.name, "PATCH", path, { password: pw.value }))));
    }));
  },

  async desktops() {
    const vms = await api("GET", "/api/vms");
    fill("vms", vms.map((v) => el("tr", { "data-vm": v.vm }, el("td", {}, v.user), el("td", {}, v.host), el("td", {}, v.vm),
      el("td", {}, v.memory_mib + " MiB"), el("td", {}, v.level), el("td", {}, v.template),
      el("td", {}, v.one_time ? "one-time" : "persistent"), el("td", {}, ago(now() - v.since)),
      el("td", {}, button("Stop", () => {
        if (window.confirm("Stop " + v.user + "'s desktop " + v.vm + "?")) act("stop " + v.vm, "POST", "/api/vms/" + v.vm + "/stop", {});
      }, "stop")))));
  },

  async hosts() {
    const range = document.getElementById("range").value;
    const hosts = await api("GET", "/api/hosts");
    const all = await Promise.all(hosts.map((h) =>
      api("GET", "/api/hosts/" + encodeURIComponent(h.name) + "/series?range=" + range)));
    const box = document.getElementById("charts");
    if (box.dataset.range !== range) { box.replaceChildren(); charts.clear(); box.dataset.range = range; }
    for (const [i, s] of all.entries()) drawHost(box, hosts[i], s);
    // Live: fetch again when the next sample is due (at most once a minute for the averages).
    clearTimeout(nextSeries);
    const step = all.length ? all[0].step : 10;
    nextSeries = setTimeout(refresh, 1000 * Math.min(Math.max(step, 2), 60));
  },

  async analysis() {
    const a = await api("GET", "/api/analysis");
    document.getElementById("summary").replaceChildren(
      el("div", { class: "figure" }, el("b", {}, String(a.arrivals)), " arrivals in " + a.weeks + (a.weeks === 1 ? " week" : " weeks")),
      el("div", { class: "figure" }, "pool needed ", el("b", {}, String(a.pool_needed_max)), " at most"),
      el("div", { class: "figure" }, "pool configured ", el("b", {}, String(a.pool_configured))),
      el("div", { class: "figure" }, "a used pool VM is replaced after ", el("b", {}, a.refill_secs + " s")));
    const h = a.hours;
    const data = [h.map((x) => x.hour_of_week), h.map((x) => x.arrivals_per_week), h.map((x) => x.active_mean),
      h.map((x) => x.pool_needed), h.map(() => a.pool_configured)];
    const box = document.getElementById("week-chart");
    box.dataset.points = String(h.length);
    const old = charts.get("week");
    if (old) { old.setData(data); } else {
      charts.set("week", new uPlot({
        width: Math.max(600, box.clientWidth - 40), height: 260,
        scales: { x: { time: false } },
        axes: [{ splits: () => [0, 24, 48, 72, 96, 120, 144, 168], values: (u, vals) => vals.map(hourName) }, {}],
        series: [{ label: "hour", value: (u, v) => v == null ? "-" : hourName(v) },
          { label: "arrivals per week", stroke: "#1f6fb2", width: 2 },
          { label: "desktops in use (mean)", stroke: "#2a9d4b", width: 2 },
          { label: "pool needed", stroke: "#c0392b", width: 2 },
          { label: "pool configured", stroke: "#7f8c8d", dash: [6, 4], width: 2 }],
      }, data, box));
    }
    fill("hours", h.filter((x) => x.arrivals > 0 || x.active_max > 0).map((x) => el("tr", {},
      el("td", {}, x.day + " " + String(x.hour).padStart(2, "0") + ":00"), el("td", {}, x.arrivals),
      el("td", {}, x.arrivals_per_week.toFixed(1)), el("td", {}, x.arrivals_max), el("td", {}, x.active_mean.toFixed(1)),
      el("td", {}, x.active_max), el("td", { class: x.pool_needed > a.pool_configured ? "error" : "" }, x.pool_needed),
      el("td", {}, a.pool_configured))));
  },
};

const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
function hourName(v) { return DAYS[Math.floor(v / 24) % 7] + " " + String(v % 24).padStart(2, "0") + "h"; }

// uPlot charts by key, kept so that new samples only replace their data.
const charts = new Map();
let nextSeries = null;
const MiB = 1048576;

// Each host's five charts: what each draws from the series' fields, and how.
const HOST_CHARTS = [
  { key: "cpu", title: "CPU", unit: "%", series: [["busy", "#1f6fb2", (s) => s.cpu.map((v) => v == null ? null : 100 * v)]] },
  { key: "mem", title: "Memory", unit: "MiB", series: [
    ["used", "#1f6fb2", (s) => s.mem_used.map((v) => v / MiB)],
    ["committed to VMs", "#e67e22", (s) => s.mem_committed.map((v) => v / MiB)],
    ["total", "#7f8c8d", (s) => s.mem_total.map((v) => v / MiB)]] },
  { key: "load", title: "Load (1 min)", unit: "", series: [["load", "#8e44ad", (s) => s.load]] },
  { key: "vms", title: "VMs", unit: "", series: [["VMs", "#2a9d4b", (s) => s.vms]] },
  { key: "net", title: "Network", unit: "KiB/s", series: [
    ["received", "#1f6fb2", (s) => s.net_rx.map((v) => v / 1024)],
    ["sent", "#c0392b", (s) => s.net_tx.map((v) => v / 1024)]] },
];

function drawHost(box, host, s) {
  let section = box.querySelector('section[data-host="' + CSS.escape(host.name) + '"]');
  if (!section) {
    section = el("section", { class: "host-charts", "data-host": host.name }, el("h2", {}, host.name));
    for (const c of HOST_CHARTS) section.append(el("div", { class: "chart", "data-chart": c.key }));
    box.append(section);
  }
  section.querySelector("h2").textContent = host.name + (host.up ? "" : " (down)") + ": " + s.t.length +
    " points, one every " + s.step + " s";
  const width = Math.max(360, Math.floor((box.clientWidth - 60) / 2));
  for (const c of HOST_CHARTS) {
    const data = [s.t, ...c.series.map(([, , f]) => f(s))];
    const div = section.querySelector('[data-chart="' + c.key + '"]');
    div.dataset.points = String(s.t.length);
    const key = host.name + "/" + c.key;
    const old = charts.get(key);
    if (old) { old.setData(data); continue; }
    charts.set(key, new uPlot({
      title: c.title + (c.unit ? " (" + c.unit + ")" : ""), width, height: 180,
      series: [{}, ...c.series.map(([label, stroke]) => ({ label, stroke, width: 2, points: { show: s.t.length < 60 } }))],
      axes: [{}, { size: 60 }],
    }, data, div));
  }
}

const range = document.getElementById("range");
if (range) range.addEventListener("change", refresh);

let pending = null;
function refresh() {
  // Events come in bursts (a boot is several stages): one fetch for a burst.
  clearTimeout(pending);
  pending = setTimeout(() => pages[page]().catch((e) => status(e.message, true)), 100);
}

const addUser = document.getElementById("add-user");
if (addUser) {
  addUser.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(addUser));
    if (!f.template) delete f.template;
    act("add " + f.name, "POST", "/api/users", f).then(() => addUser.reset());
  });
}

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": csrf } });
  location.href = "/login";
});

const events = new EventSource("/api/events");
const live = document.getElementById("live");
events.addEventListener("open", () => { live.className = "on"; });
events.addEventListener("error", () => { live.className = "off"; });
events.addEventListener("change", refresh);
pages[page]().catch((e) => status(e.message, true));
