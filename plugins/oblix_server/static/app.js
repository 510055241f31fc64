// The Oblix dashboard: reads the server's /v1/oblix/* endpoints with the key typed at login.
// The key lives only in this closure (never in a cookie, storage or the URL).
"use strict";
(() => {
  let key = null;
  const $ = (id) => document.getElementById(id);

  async function api(path) {
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) { logout("Wrong key: this server refused it."); throw new Error("401"); }
    const body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
    return body;
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function table(id, columns, rows, onClick) {
    const node = $(id);
    node.replaceChildren();
    const head = el("tr");
    columns.forEach((c) => head.appendChild(el("th", c)));
    node.appendChild(head);
    rows.forEach((row, i) => {
      const tr = el("tr");
      row.forEach((cell) => {
        const td = el("td", cell && cell.text !== undefined ? cell.text : cell);
        if (cell && cell.cls) td.className = cell.cls;
        tr.appendChild(td);
      });
      if (onClick) { tr.className = "clickable"; tr.addEventListener("click", () => onClick(i)); }
      node.appendChild(tr);
    });
    if (!rows.length) { const tr = el("tr"); tr.appendChild(el("td", "nothing yet")); node.appendChild(tr); }
  }

  const usd = (v) => "$" + (Math.abs(v) < 1 ? v.toFixed(6) : v.toFixed(2));
  const when = (seconds) => new Date(seconds * 1000).toLocaleTimeString();

  // -- charts: bars on a canvas, one group per day ----------------------------------------
  function chart(id, labels, series) {
    const canvas = $(id), ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 34;
    ctx.clearRect(0, 0, w, h);
    const totals = labels.map((_, i) => series.reduce((s, one) => s + Math.max(0, one.values[i]), 0));
    const top = Math.max(...totals, 1e-12);
    ctx.fillStyle = "#667"; ctx.font = "11px sans-serif";
    ctx.fillText(top < 0.01 ? top.toExponential(1) : top.toFixed(2), 2, 12);
    ctx.strokeStyle = "#ccd"; ctx.beginPath(); ctx.moveTo(pad, h - 20); ctx.lineTo(w, h - 20); ctx.stroke();
    const step = (w - pad) / Math.max(labels.length, 1), bar = Math.max(2, step * 0.7);
    labels.forEach((label, i) => {
      let y = h - 20;
      series.forEach((one) => {
        const height = (Math.max(0, one.values[i]) / top) * (h - 40);
        ctx.fillStyle = one.color; ctx.fillRect(pad + i * step, y - height, bar, height); y -= height;
      });
      if (labels.length <= 12 || i % Math.ceil(labels.length / 8) === 0) {
        ctx.fillStyle = "#667"; ctx.fillText(label.slice(5), pad + i * step, h - 6);
      }
    });
    canvas.dataset.drawn = String(labels.length);
  }

  function days(since, rows) {
    const byDay = new Map(rows.map((r) => [r.key, r]));
    const out = [], day = new Date(since + "T00:00:00Z"), today = new Date();
    while (day <= today) { const k = day.toISOString().slice(0, 10); out.push([k, byDay.get(k)]); day.setUTCDate(day.getUTCDate() + 1); }
    return out;
  }

  async function showUsage() {
    const since = $("since").value;
    const [byDay, byModel] = await Promise.all([api("/v1/oblix/usage?by=day&since=" + since), api("/v1/oblix/usage?by=model&since=" + since)]);
    const t = byDay.total, cards = $("usage-totals");
    cards.replaceChildren();
    [["requests", t.requests], ["answered locally", Math.round(t.local_share * 100) + "%"], ["cost", usd(t.cost_usd)],
     ["all-cloud cost", usd(t.versus_cost_usd)], ["saved", usd(t.saved_usd)], ["tokens in / out", t.input_tokens + " / " + t.output_tokens]]
      .forEach(([name, value]) => { const card = el("div", name, "card"); card.prepend(el("b", value)); card.dataset.name = name; cards.appendChild(card); });
    $("versus").textContent = byDay.versus;
    const series = days(byDay.since, byDay.rows), labels = series.map(([d]) => d);
    const pick = (field) => series.map(([, r]) => (r ? r[field] : 0));
    chart("chart-cost", labels, [{ values: pick("cost_usd"), color: "#3a6fd8" }]);
    chart("chart-requests", labels, [{ values: pick("local_requests"), color: "#2e8b57" }, { values: pick("cloud_requests"), color: "#3a6fd8" }]);
    chart("chart-saved", labels, [{ values: pick("saved_usd"), color: "#c28a00" }]);
    table("usage-models", ["model", "requests", "local", "tokens in", "tokens out", "cost", "saved"],
      byModel.rows.map((r) => [r.key, r.requests, Math.round(r.local_share * 100) + "%", r.input_tokens, r.output_tokens, usd(r.cost_usd), usd(r.saved_usd)]));
  }

  async function showSessions() {
    const q = $("search").value.trim();
    const found = (await api("/v1/oblix/sessions" + (q ? "?q=" + encodeURIComponent(q) : ""))).data;
    table("session-list", ["id", "title", "updated", "messages", q ? "match" : "metadata"],
      found.map((s) => [s.id, s.title, s.updated_at, s.message_count, q ? s.snippet : JSON.stringify(s.metadata)]),
      (i) => openSession(found[i].id));
  }

  async function openSession(id) {
    const s = await api("/v1/oblix/sessions/" + encodeURIComponent(id)), view = $("session-view");
    view.replaceChildren(el("h3", s.title || s.id), el("p", s.id, "hint"));
    s.messages.forEach((m) => {
      const box = el("div", m.content, "message " + m.role);
      box.prepend(el("small", m.role + (m.model_id ? " · " + m.model_id : "") + (m.metrics && m.metrics.cost_usd !== undefined ? " · " + usd(m.metrics.cost_usd) : "")));
      view.appendChild(box);
    });
    view.hidden = false;
  }

  async function showModels() {
    const body = await api("/v1/oblix/models");
    table("model-list", ["model", "locality", "status", "available", "busy", "reason", "returns"],
      body.data.map((m) => [m.id, m.locality, { text: m.status, cls: "state-" + m.status }, m.available, m.busy, m.reason || "", m.returns || ""]));
    table("failure-list", ["time", "error", "models", "message"], body.failures.map((f) => [when(f.at), f.error, f.models.join(", "), f.message]));
  }

  async function showAgents() {
    const rows = [];
    (await api("/v1/oblix/agents")).data.slice().reverse().forEach((r) =>
      r.checks.forEach((c) => rows.push([when(r.at), c.agent, { text: c.state, cls: "state-" + c.state }, c.target || "", c.reason || ""])));
    table("agent-list", ["time", "agent", "state", "target", "reason"], rows);
  }

  async function showDecisions() {
    table("decision-list", ["time", "answered by", "rule", "reason", "cost"],
      (await api("/v1/oblix/decisions")).data.map((d) => [when(d.at), d.model_id, d.rule, d.reason, usd(d.cost_usd || 0)]));
  }

  async function showDocuments() {
    const body = await api("/v1/oblix/workspaces");
    $("workspace-note").textContent = body.note || "";
    table("workspace-list", ["workspace", "private", "documents", "chunks", "size", "embedder", "sources"],
      body.workspaces.map((w) => [w.name, w.private ? "yes" : "no", w.documents, w.chunks,
        w.bytes < 1024 ? w.bytes + " B" : Math.round(w.bytes / 1024) + " KiB", w.embedder, w.sources.join(", ") || "uploads"]));
  }

  const views = { usage: showUsage, sessions: showSessions, models: showModels, agents: showAgents, decisions: showDecisions, documents: showDocuments };

  function show(tab) {
    document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== tab; });
    document.querySelectorAll("nav button[data-tab]").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
    views[tab]().catch((e) => { if (e.message !== "401") console.error(e); });
  }

  function logout(message) {
    key = null;
    $("tabs").hidden = true;
    document.querySelectorAll(".tab").forEach((s) => { s.hidden = true; });
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  async function login(candidate) {
    const response = await fetch("/v1/oblix/usage?since=1d", { headers: candidate ? { Authorization: "Bearer " + candidate } : {} });
    if (response.status === 401) { logout(candidate ? "Wrong key: this server refused it." : ""); return; }
    key = candidate;
    $("login").hidden = true;
    $("tabs").hidden = false;
    $("login-error").textContent = "";
    show("usage");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (e) => { e.preventDefault(); const k = $("key").value; $("key").value = ""; login(k); });
    document.querySelectorAll("nav button[data-tab]").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
    $("logout").addEventListener("click", () => logout(""));
    $("since").addEventListener("change", () => show("usage"));
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); showSessions(); });
    login(null); // a server without a key needs no login
  });
})();
