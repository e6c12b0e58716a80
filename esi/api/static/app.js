// ESI search page: text query -> top ECGs as server-rendered 12-lead plots -> click for details.
// Plain DOM code, no build step; every server string is inserted with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
let selectedId = null;

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function labelSummary(metadata) {
  const labels = metadata.labels || metadata.codes || "";
  return Array.isArray(labels) ? labels.join(", ") : String(labels);
}

function renderResults(data) {
  const results = $("results");
  results.replaceChildren();
  data.results.forEach((hit) => {
    const card = el("article", "card");
    card.tabIndex = 0;
    card.dataset.recordId = hit.id;
    const img = el("img");
    img.loading = "lazy";
    img.alt = `12-lead ECG ${hit.id}`;
    img.src = hit.plot_url;
    card.appendChild(img);
    const meta = el("div", "meta");
    meta.appendChild(el("span", "rank", `#${hit.rank} · ${hit.id}`));
    meta.appendChild(el("span", "score", `similarity ${hit.score.toFixed(3)}`));
    card.appendChild(meta);
    const labels = labelSummary(hit.metadata || {});
    if (labels) card.appendChild(el("div", "labels", labels));
    card.addEventListener("click", () => showDetail(hit.id));
    card.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        showDetail(hit.id);
      }
    });
    results.appendChild(card);
  });
}

async function search(event) {
  if (event) event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const k = $("k").value;
  setStatus("Searching…");
  $("search-button").disabled = true;
  const started = performance.now();
  try {
    const data = await getJSON(`api/search?q=${encodeURIComponent(query)}&k=${encodeURIComponent(k)}`);
    renderResults(data);
    const ms = Math.round(performance.now() - started);
    setStatus(`${data.results.length} ECGs for “${data.query}” (${ms} ms)`);
    history.replaceState(null, "", `?q=${encodeURIComponent(query)}`);
  } catch (err) {
    setStatus(`Search failed: ${err.message}`, true);
  } finally {
    $("search-button").disabled = false;
  }
}

function renderScores(zeroShot) {
  const list = $("detail-scores");
  list.replaceChildren();
  (zeroShot.scores || []).forEach((item) => {
    const li = el("li");
    li.appendChild(el("span", "cls", `${item.display} `));
    li.appendChild(el("span", "num", item.score.toFixed(3)));
    const bar = el("span", "bar");
    bar.style.width = `${Math.max(2, Math.round(100 * (item.probability ?? 0)))}px`;
    bar.title = `display probability ${(item.probability ?? 0).toFixed(2)}`;
    li.appendChild(bar);
    list.appendChild(li);
  });
}

function renderTexts(texts) {
  const list = $("detail-texts");
  list.replaceChildren();
  texts.forEach((item) => {
    const li = el("li");
    li.appendChild(el("span", "sim", item.score.toFixed(3)));
    li.appendChild(el("span", "text", item.text));
    list.appendChild(li);
  });
  if (!texts.length) list.appendChild(el("li", "", "no texts indexed"));
}

function formatValue(value) {
  if (Array.isArray(value)) return value.join(", ");
  if (value && typeof value === "object") {
    return Object.entries(value).map(([key, v]) => `${key} (${v})`).join(", ");
  }
  return String(value);
}

function renderMeta(record) {
  const dl = $("detail-meta");
  dl.replaceChildren();
  const hidden = new Set(["codes"]); // the same information as "labels"
  const rows = Object.entries(record.metadata || {})
    .filter(([key, value]) => !hidden.has(key) && value !== null && value !== "")
    .sort(([a], [b]) => a.localeCompare(b));
  rows.forEach(([key, value]) => {
    dl.appendChild(el("dt", "", key));
    dl.appendChild(el("dd", "", formatValue(value)));
  });
  (record.notes || []).forEach((note) => {
    dl.appendChild(el("dt", "", "note"));
    dl.appendChild(el("dd", "", note));
  });
}

async function showDetail(recordId) {
  selectedId = recordId;
  document.querySelectorAll(".card").forEach((card) => {
    card.classList.toggle("selected", card.dataset.recordId === recordId);
  });
  const labelset = $("labelset").value;
  setStatus(`Analysing ${recordId}…`);
  try {
    const query = labelset ? `?labelset=${encodeURIComponent(labelset)}` : "";
    const record = await getJSON(`api/records/${encodeURIComponent(recordId)}${query}`);
    if (selectedId !== recordId) return; // a later click won
    $("detail").hidden = false;
    $("detail-title").textContent = `ECG ${record.id}`;
    $("detail-plot").src = record.plot_url;
    $("detail-caption").textContent = record.caption ?? record.caption_error ?? "";
    renderScores(record.zero_shot || {});
    renderTexts(record.nearest_texts || []);
    renderMeta(record);
    setStatus(`Showing ${record.id}`);
    $("detail").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (err) {
    setStatus(`Could not load ${recordId}: ${err.message}`, true);
  }
}

async function init() {
  $("search-form").addEventListener("submit", search);
  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true;
    selectedId = null;
    document.querySelectorAll(".card.selected").forEach((card) => card.classList.remove("selected"));
  });
  $("labelset").addEventListener("change", () => {
    if (selectedId) showDetail(selectedId);
  });
  try {
    const [health, labelsets] = await Promise.all([getJSON("api/health"), getJSON("api/labelsets")]);
    labelsets.labelsets.forEach((item) => {
      const option = el("option", "", item.name);
      option.value = item.name;
      option.title = item.description || "";
      option.selected = item.name === labelsets.default;
      $("labelset").appendChild(option);
    });
    $("footer").textContent =
      `model ${health.model.name} · collection “${health.collection.name}” (${health.collection.count} ECGs) · ` +
      "PTB-XL data: Wagner et al., Scientific Data 2020 (CC BY 4.0) · API docs at ";
    const docs = el("a", "", "/docs");
    docs.href = "docs";
    $("footer").appendChild(docs);
  } catch (err) {
    setStatus(`Server not ready: ${err.message}`, true);
  }
  const initial = new URLSearchParams(location.search).get("q");
  if (initial) {
    $("query").value = initial;
    search();
  }
}

init();
