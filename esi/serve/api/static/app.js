// ESI search page: text query -> top ECGs as server-rendered 12-lead plots -> click for details.
// A user's own ECG (dropped or chosen files) goes to POST api/analyze: its plot, scores, caption,
// nearest passages and most similar indexed ECGs, with the server's notes on how it was read.
// Plain DOM code, no build step; every server string is inserted with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
let selectedId = null;
let uploadFiles = []; // the File objects of the ECG to analyse (from the file input or a drop)
let uploadRun = 0; // bumped per analysis, so a slow answer never overwrites a newer one

// Single-file formats the API reads (esi/api/uploads.py); everything else is a WFDB/CinC pair.
const SINGLE_SUFFIXES = [".npy", ".json", ".edf", ".bdf", ".dcm", ".dicom", ".xml", ".csv"];
const PAIR_DATA_SUFFIXES = [".dat", ".mat"];

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// The JSON body of a response; an HTTP error throws an Error with the status and the server's reason
// (its "detail", plus Retry-After on a 503), so the caller can show the user why.
async function readJSON(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    let message = typeof detail === "string" ? detail : JSON.stringify(detail);
    const retryAfter = response.headers.get("Retry-After");
    if (response.status === 503 && retryAfter) message += ` (try again in ${retryAfter} s)`;
    const error = new Error(message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function getJSON(url) {
  return readJSON(await fetch(url, { headers: { Accept: "application/json" } }));
}

async function postForm(url, form) {
  return readJSON(await fetch(url, { method: "POST", body: form, headers: { Accept: "application/json" } }));
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

function makeCard(hit) {
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
  return card;
}

function renderResults(data) {
  const results = $("results");
  results.replaceChildren(...data.results.map(makeCard));
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

function renderScores(zeroShot, list = $("detail-scores")) {
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

function renderTexts(texts, list = $("detail-texts")) {
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

// ---- the user's own ECG --------------------------------------------------------------------------

function suffixOf(name) {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot).toLowerCase();
}

// What is still missing before the chosen files can be sent, or null. Only the obvious cases are
// caught here; the server checks everything else and its reason is shown as it comes.
function uploadPrompt(files) {
  if (!files.length) return "Choose or drop an ECG file first.";
  const suffixes = files.map((file) => suffixOf(file.name));
  if (suffixes.length === 1 && suffixes[0] === ".npy" && !$("sampling-rate").value) {
    return `Enter the sampling rate (Hz) of ${files[0].name}, then press Analyse.`;
  }
  if (suffixes.some((suffix) => SINGLE_SUFFIXES.includes(suffix))) return null;
  const header = files.find((file) => suffixOf(file.name) === ".hea");
  const hasData = suffixes.some((suffix) => PAIR_DATA_SUFFIXES.includes(suffix));
  if (header && !hasData) {
    return `Add the .dat or .mat signal file that goes with ${header.name} (select both files together).`;
  }
  if (hasData && !header) return "Add the record's .hea header file too (select both files together).";
  return null;
}

function showUploadError(message) {
  const box = $("upload-error");
  box.textContent = message;
  box.hidden = !message;
}

function chooseFiles(fileList) {
  uploadFiles = Array.from(fileList || []);
  $("upload-chosen").textContent = uploadFiles.length
    ? `Chosen: ${uploadFiles.map((file) => file.name).join(", ")}`
    : "";
  showUploadError("");
  const prompt = uploadPrompt(uploadFiles);
  if (prompt) {
    setStatus(prompt);
    if (prompt.startsWith("Enter the sampling rate")) $("sampling-rate").focus();
    return;
  }
  analyse();
}

function renderUploadMeta(ecg) {
  const dl = $("upload-meta");
  dl.replaceChildren();
  const rows = [
    ["name", ecg.name],
    ["format", ecg.format],
    ["sampling rate", `${ecg.sampling_rate} Hz`],
    ["duration", `${ecg.duration_s} s (${ecg.n_samples} samples)`],
    ["age", ecg.age],
    ["sex", ecg.sex],
  ];
  rows.filter(([, value]) => value !== null && value !== undefined && value !== "").forEach(([key, value]) => {
    dl.appendChild(el("dt", "", key));
    dl.appendChild(el("dd", "", String(value)));
  });
}

function renderUpload(data) {
  const ecg = data.ecg || {};
  $("upload-result").hidden = false;
  $("upload-title").textContent = `Your ECG: ${ecg.name || "upload"}`;
  const notes = $("upload-notes");
  notes.replaceChildren(...(data.notes || []).map((note) => el("li", "", note)));
  notes.hidden = !(data.notes || []).length;
  const plot = $("upload-plot");
  plot.hidden = !data.plot_url;
  if (data.plot_url) plot.src = data.plot_url;
  else plot.removeAttribute("src");
  $("upload-plot-error").textContent = data.plot_error ? `No plot: ${data.plot_error}` : "";
  $("upload-plot-error").hidden = !data.plot_error;
  $("upload-caption").textContent = data.caption ?? data.caption_error ?? "";
  renderUploadMeta(ecg);
  const zeroShot = data.zero_shot || {};
  $("upload-scores-labelset").textContent = zeroShot.labelset ? `(${zeroShot.labelset})` : "";
  renderScores(zeroShot, $("upload-scores"));
  $("upload-texts-source").textContent = data.texts_source ? `from ${data.texts_source}` : "";
  renderTexts(data.nearest_texts || [], $("upload-texts"));
  const similar = $("upload-similar");
  similar.replaceChildren(...(data.similar || []).map(makeCard));
  if (!(data.similar || []).length) similar.appendChild(el("p", "muted", "the collection is empty"));
}

async function analyse(event) {
  if (event) event.preventDefault();
  const prompt = uploadPrompt(uploadFiles);
  if (prompt) {
    showUploadError(prompt);
    return;
  }
  const run = ++uploadRun;
  const form = new FormData();
  uploadFiles.forEach((file) => form.append("files", file, file.name));
  const rate = $("sampling-rate").value.trim();
  if (rate) form.append("sampling_rate", rate);
  const params = new URLSearchParams();
  if ($("upload-labelset").value) params.set("labelset", $("upload-labelset").value);
  const names = uploadFiles.map((file) => file.name).join(" + ");
  showUploadError("");
  setStatus(`Analysing ${names}…`);
  $("upload-button").disabled = true;
  const started = performance.now();
  try {
    const data = await postForm(`api/analyze?${params}`, form);
    if (run !== uploadRun) return; // a newer upload is on its way
    renderUpload(data);
    const ms = Math.round(performance.now() - started);
    setStatus(`Analysed ${names} (${ms} ms)`);
    $("upload-result").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (err) {
    if (run !== uploadRun) return;
    const what = err.status === 503 ? "Server busy" : "Could not analyse";
    showUploadError(`${what} ${names}: ${err.message}`);
    setStatus(`${what} ${names}: ${err.message}`, true);
  } finally {
    if (run === uploadRun) $("upload-button").disabled = false;
  }
}

function initUpload() {
  const dropzone = $("dropzone");
  $("upload-files").addEventListener("change", (event) => chooseFiles(event.target.files));
  $("upload-form").addEventListener("submit", analyse);
  ["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  }));
  ["dragleave", "dragend"].forEach((type) => dropzone.addEventListener(type, () => {
    dropzone.classList.remove("dragging");
  }));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (!files || !files.length) return;
    try {
      $("upload-files").files = files; // keep the input showing what will be sent
    } catch (err) {
      // older browsers cannot assign to input.files; the dropped files are still used
    }
    chooseFiles(files);
  });
  $("upload-labelset").addEventListener("change", () => {
    if (!$("upload-result").hidden && !uploadPrompt(uploadFiles)) analyse();
  });
  $("upload-close").addEventListener("click", () => {
    $("upload-result").hidden = true;
  });
}

async function init() {
  initUpload();
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
    ["labelset", "upload-labelset"].forEach((selectId) => {
      labelsets.labelsets.forEach((item) => {
        const option = el("option", "", item.name);
        option.value = item.name;
        option.title = item.description || "";
        option.selected = item.name === labelsets.default;
        $(selectId).appendChild(option);
      });
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
