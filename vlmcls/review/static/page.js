"use strict";
// The review page: keyboard first. Every act is POSTed at once (the server appends it to the labels file).
const TOKEN = document.querySelector('meta[name="review-token"]').content;
const PAGE = 24;
const VIEWS = ["least-sure", "by-class", "unknown", "changed", "next"];
// who is labelling and what this tab did, kept across reloads of the tab (undo still works after a reload)
const REVIEWER = sessionStorage.getItem("reviewer") || Math.random().toString(36).slice(2, 8);
sessionStorage.setItem("reviewer", REVIEWER);
let state = {rows: [], classes: []}, view = "least-sure", page = 0, focus = 0, prefix = "", nextOrder = null;
const history = JSON.parse(sessionStorage.getItem("history") || "[]");  // rows this tab acted on, for undo
function remember() { sessionStorage.setItem("history", JSON.stringify(history.slice(-500))); }

function api(path, body) {
  const init = body === undefined ? {headers: {"X-Review-Token": TOKEN}} :
    {method: "POST", headers: {"X-Review-Token": TOKEN, "Content-Type": "application/json"}, body: JSON.stringify(body)};
  return fetch(path, init).then(r => r.json().then(j => { if (!r.ok) throw new Error(j.error || r.status); return j; }));
}
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }

function viewRows() {
  const ok = state.rows.filter(r => !r.error);
  if (view === "least-sure") return ok.slice().sort((a, b) => a.margin - b.margin);
  if (view === "by-class") return ok.slice().sort((a, b) => (a.final || "~").localeCompare(b.final || "~") || b.top_k[0].prob - a.top_k[0].prob);
  if (view === "unknown") return ok.filter(r => r.unknown || r.label === "unknown" || r.open_world != null).sort((a, b) => (b.open_world || 0) - (a.open_world || 0));
  if (view === "changed") return ok.filter(r => (r.corrected && r.correction !== r.label) || (r.was && r.was !== r.label));
  if (view === "next") return (nextOrder || []).map(n => state.rows[n]).filter(r => r && !r.corrected);
  return ok;
}
function visible() { return viewRows().slice(page * PAGE, page * PAGE + PAGE); }

function render() {
  document.getElementById("results").textContent = state.results || "";
  const acc = state.accuracy;
  document.getElementById("accuracy").textContent = acc == null ? "" : `accuracy ${(100 * acc).toFixed(1)} %`;
  document.getElementById("labelled").textContent = `· ${state.labelled} labelled`;
  document.getElementById("prefix").textContent = prefix ? `class: ${prefix}… (${matches().join(", ") || "no match"})` : "";
  for (const b of document.querySelectorAll("#views button")) b.classList.toggle("on", b.dataset.view === view);
  const grid = document.getElementById("grid");
  grid.replaceChildren();
  const rows = visible();
  focus = Math.max(0, Math.min(focus, rows.length - 1));
  let group = null;
  rows.forEach((r, i) => {
    if (view === "by-class" && r.final !== group) { group = r.final; grid.append(el("div", "group", group || "unknown")); }
    const card = el("div", "card" + (i === focus ? " focus" : "") + (r.corrected ? (r.unknown ? " unknown" : " done") : ""));
    card.dataset.row = r.row;
    const img = el("img"); img.alt = r.name; img.loading = "lazy";
    img.src = `/image/${r.row}?token=${encodeURIComponent(TOKEN)}`;
    card.append(img, el("div", "name", r.name));
    card.append(el("div", "label", r.label || ""));
    if (r.was && r.was !== r.label) card.append(el("div", "was", `was ${r.was}`));
    if (r.corrected) card.append(el("div", "fix", r.unknown ? "✗ unknown" : `✓ ${r.correction}`));
    r.top_k.slice(0, 5).forEach((t, k) => {
      const bar = el("div", "bar"); const fill = el("i"); fill.style.width = `${(100 * t.prob).toFixed(1)}%`;
      const b = el("span", "b"); b.append(fill);
      bar.append(el("span", "k", String(k + 1)), el("span", "t", t.label), b, el("span", "p", t.prob.toFixed(2)));
      card.append(bar);
    });
    if (r.open_world != null) card.append(el("div", "name", `open-world ${Number(r.open_world).toFixed(2)}`));
    card.addEventListener("click", () => { focus = i; render(); });
    grid.append(card);
  });
  const total = viewRows().length;
  document.getElementById("pager").textContent = total ? `page ${page + 1} of ${Math.ceil(total / PAGE)} · ${total} images in this view` : "no images in this view";
  const f = grid.querySelector(".card.focus"); if (f && f.scrollIntoView) f.scrollIntoView({block: "nearest"});
}

function refresh() { return api("/api/state").then(s => { state = s; render(); }); }
function matches() {
  const p = prefix.toLowerCase();
  return p ? state.classes.filter(c => c.toLowerCase().startsWith(p)) : [];
}
function act(rows, action, labels) {
  const acts = rows.map((r, i) => ({row: r.row, action, label: labels ? labels[i] : null}));
  acts.forEach(a => history.push(a.row)); remember();
  return api("/api/act", {acts, reviewer: REVIEWER}).then(refresh);
}
function current() { return visible()[focus]; }
function advance() { focus += 1; if (focus >= PAGE && (page + 1) * PAGE < viewRows().length) { page += 1; focus = 0; } }
function label(cls) { const r = current(); if (!r || !cls) return; const stays = view !== "next"; act([r], "label", [cls]).then(() => { if (stays) advance(); render(); }); }

function improve() {
  const box = document.getElementById("improve-result");
  box.hidden = false; box.textContent = "re-scoring with your labels…";
  api("/api/improve", {}).then(res => {
    box.replaceChildren();
    const pct = a => a == null ? "–" : `${(100 * a).toFixed(1)} %`;
    box.append(el("div", "", `${res.changed_count} labels change with ${res.support} labelled images as support; accuracy ${pct(res.accuracy_before)} → ${pct(res.accuracy_after)}`));
    const list = el("div", "name", res.changed.slice(0, 30).map(c => `${c.path}: ${c.before} → ${c.after}`).join(" · "));
    const keep = el("button", "", "keep the new result (K)"); keep.id = "keep";
    keep.addEventListener("click", keepImproved);
    box.append(list, keep); keep.focus();
  }).catch(e => { box.textContent = `could not improve: ${e.message}`; });
}
function keepImproved() {
  api("/api/keep", {}).then(res => {
    document.getElementById("improve-result").textContent = `kept: ${res.written}`;
    return refresh();
  });
}
function setView(v) {
  view = v; page = 0; focus = 0;
  if (v === "next") api("/api/next").then(res => { nextOrder = res.rows; render(); }); else render();
}

document.addEventListener("keydown", e => {
  if (e.target.tagName === "BUTTON" && (e.key === "Enter" || e.key === " ")) return;  // the button's own action
  const rows = visible(); const cols = Math.max(1, Math.round(document.getElementById("grid").clientWidth / 178));
  if (e.ctrlKey && e.key.toLowerCase() === "z") { e.preventDefault(); const row = history.pop(); remember(); if (row !== undefined) api("/api/act", {acts: [{row, action: "undo"}], reviewer: REVIEWER}).then(refresh); return; }
  if (e.ctrlKey || e.altKey || e.metaKey) return;
  if (e.key === "ArrowRight") focus = Math.min(rows.length - 1, focus + 1);
  else if (e.key === "ArrowLeft") focus = Math.max(0, focus - 1);
  else if (e.key === "ArrowDown") focus = Math.min(rows.length - 1, focus + cols);
  else if (e.key === "ArrowUp") focus = Math.max(0, focus - cols);
  else if (e.key === "PageDown") { if ((page + 1) * PAGE < viewRows().length) { page += 1; focus = 0; } }
  else if (e.key === "PageUp") { page = Math.max(0, page - 1); focus = 0; }
  else if (e.key === "Enter" && e.shiftKey) { const todo = rows.filter(r => !r.corrected && r.label); act(todo, "label", todo.map(r => r.label)); }
  else if (e.key === "Enter") { const m = matches(); const cls = prefix ? (m.length ? m[0] : null) : (current() && current().label); prefix = ""; label(cls); }
  else if (e.key === "Escape") prefix = "";
  else if (e.key === "Backspace") prefix = prefix.slice(0, -1);
  else if (e.key === "-") { const r = current(); if (r) act([r], "unknown").then(() => { advance(); render(); }); }
  else if (e.key === " ") advance();
  else if (e.key === "[" || e.key === "]") setView(VIEWS[(VIEWS.indexOf(view) + (e.key === "]" ? 1 : VIEWS.length - 1)) % VIEWS.length]);
  else if (e.key === "!") improve();
  else if (e.key === "K" && document.getElementById("keep")) keepImproved();
  else if (/^[1-9]$/.test(e.key) && !prefix) { const r = current(); const t = r && r.top_k[Number(e.key) - 1]; if (t) label(t.label); }
  else if (e.key.length === 1 && /[\p{L}\p{N}_ .'-]/u.test(e.key)) prefix += e.key;
  else return;
  e.preventDefault();
  render();
});
for (const b of document.querySelectorAll("#views button")) b.addEventListener("click", () => setView(b.dataset.view));
document.getElementById("improve").addEventListener("click", improve);
document.getElementById("accept-page").addEventListener("click", () => { const todo = visible().filter(r => !r.corrected && r.label); act(todo, "label", todo.map(r => r.label)); });
document.getElementById("undo").addEventListener("click", () => { const row = history.pop(); remember(); if (row !== undefined) api("/api/act", {acts: [{row, action: "undo"}], reviewer: REVIEWER}).then(refresh); });
refresh().then(() => document.getElementById("grid").focus());
