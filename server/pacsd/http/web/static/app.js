// pacsd's web page: plain JavaScript, no framework, only this origin's resources.
// Views (by the URL's hash): #/studies, #/study/<uid>, #/image/<study>/<series>/<n>,
// #/associations, #/health.
"use strict";

const $ = (selector) => document.querySelector(selector);
const VIEWS = ["studies", "study", "image", "associations", "health"];
const THUMBNAIL = "viewport=146,146";

// The first value of a DICOM JSON attribute (PS3.18 F.2), person names as their alphabetic form.
function value(item, tag) {
  const attribute = item && item[tag];
  if (!attribute || !attribute.Value || attribute.Value.length === 0) return "";
  const first = attribute.Value[0];
  if (attribute.vr === "PN") return (first && first.Alphabetic) || "";
  return attribute.Value.length > 1 && typeof first === "string"
    ? attribute.Value.join("\\") : String(first);
}

function formatDate(text) {
  return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function setStatus(element, text, isError) {
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

async function getJson(url, accept) {
  const response = await fetch(url, { headers: { Accept: accept || "application/json" } });
  if (response.status === 204) return [];
  const text = await response.text();
  if (!response.ok) {
    let reason = text;
    try { reason = JSON.parse(text).error || text; } catch (_) { /* not JSON */ }
    const error = new Error(`${response.status}: ${reason}`);
    error.status = response.status;
    throw error;
  }
  return text ? JSON.parse(text) : [];
}

const qido = (path) => getJson(`/dicom-web${path}`, "application/dicom+json");

function show(name) {
  for (const view of VIEWS) $(`#view-${view}`).hidden = view !== name;
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.id.replace("nav-", "");
    link.classList.toggle("active",
      target === name || (target === "studies" && (name === "study" || name === "image")));
  }
}

// -- study search ----------------------------------------------------------------------------

function searchParameters() {
  const params = new URLSearchParams();
  const name = $("#q-name").value.trim();
  if (name) params.set("PatientName", /[*?]/.test(name) ? name : `${name}*`);
  const id = $("#q-id").value.trim();
  if (id) params.set("PatientID", id);
  const from = $("#q-from").value.replaceAll("-", "");
  const to = $("#q-to").value.replaceAll("-", "");
  if (from || to) params.set("StudyDate", from === to ? from : `${from}-${to}`);
  const modality = $("#q-modality").value.trim().toUpperCase();
  if (modality) params.set("ModalitiesInStudy", modality);
  params.set("limit", "200");
  return params;
}

async function searchStudies(event) {
  if (event) event.preventDefault();
  const status = $("#search-status");
  const body = $("#study-table tbody");
  const button = $("#search-button");
  button.disabled = true;
  setStatus(status, "Searching…");
  try {
    const studies = await qido(`/studies?${searchParameters()}`);
    body.replaceChildren();
    for (const study of studies) {
      const uid = value(study, "0020000D");
      const row = document.createElement("tr");
      row.className = "link study-row";
      row.dataset.uid = uid;
      cell(row, value(study, "00100010"));
      cell(row, value(study, "00100020"));
      cell(row, formatDate(value(study, "00080020")));
      cell(row, value(study, "00081030"));
      cell(row, value(study, "00080061"));
      cell(row, value(study, "00201206"));
      cell(row, value(study, "00201208"));
      row.addEventListener("click", () => { location.hash = `#/study/${uid}`; });
      body.appendChild(row);
    }
    setStatus(status, `${studies.length} ${studies.length === 1 ? "study" : "studies"} found`);
  } catch (error) {
    setStatus(status, `Search failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// -- one study: its series with thumbnails ---------------------------------------------------

async function openStudy(studyUid) {
  show("study");
  const status = $("#study-status");
  const grid = $("#series-grid");
  grid.replaceChildren();
  $("#study-title").textContent = "Study";
  setStatus(status, "Loading series…");
  try {
    const [studies, series] = await Promise.all([
      qido(`/studies?StudyInstanceUID=${encodeURIComponent(studyUid)}`),
      qido(`/studies/${studyUid}/series`),
    ]);
    const study = studies[0] || {};
    const title = [value(study, "00100010"), formatDate(value(study, "00080020")),
      value(study, "00081030")].filter(Boolean).join(" · ");
    $("#study-title").textContent = title || studyUid;
    series.sort((a, b) => Number(value(a, "00200011") || 0) - Number(value(b, "00200011") || 0));
    for (const item of series) grid.appendChild(seriesCard(studyUid, item));
    setStatus(status, `${series.length} series`);
  } catch (error) {
    setStatus(status, `Cannot load the study: ${error.message}`, true);
  }
}

function seriesCard(studyUid, item) {
  const seriesUid = value(item, "0020000E");
  const card = document.createElement("div");
  card.className = "series";
  card.dataset.uid = seriesUid;
  const image = document.createElement("img");
  image.className = "thumbnail";
  image.alt = "series thumbnail";
  image.src = `/dicom-web/studies/${studyUid}/series/${seriesUid}/thumbnail?${THUMBNAIL}`;
  const caption = document.createElement("div");
  caption.className = "caption";
  const number = value(item, "00200011");
  caption.textContent = `${value(item, "00080060")} #${number || "?"} ` +
    `${value(item, "0008103E")} (${value(item, "00201209") || "?"} images)`;
  card.append(image, caption);
  card.addEventListener("click", () => { location.hash = `#/image/${studyUid}/${seriesUid}/1`; });
  return card;
}

// -- one image ----------------------------------------------------------------------------------

const imageState = { key: "", instances: [] };

async function openImage(studyUid, seriesUid, position) {
  show("image");
  $("#back-to-study").href = `#/study/${studyUid}`;
  const status = $("#image-status");
  const key = `${studyUid}/${seriesUid}`;
  try {
    if (imageState.key !== key) {
      setStatus(status, "Loading instances…");
      const instances = await qido(`/studies/${studyUid}/series/${seriesUid}/instances`);
      instances.sort((a, b) => Number(value(a, "00200013") || 0) - Number(value(b, "00200013") || 0));
      imageState.key = key;
      imageState.instances = instances;
    }
    const count = imageState.instances.length;
    if (count === 0) throw new Error("the series has no instances");
    const index = Math.min(Math.max(position, 1), count);
    const instance = imageState.instances[index - 1];
    const sopUid = value(instance, "00080018");
    $("#image-title").textContent = `Instance ${value(instance, "00200013") || index}`;
    $("#image-position").textContent = `${index} / ${count}`;
    $("#image-prev").disabled = index <= 1;
    $("#image-next").disabled = index >= count;
    $("#image-prev").onclick = () => { location.hash = `#/image/${key}/${index - 1}`; };
    $("#image-next").onclick = () => { location.hash = `#/image/${key}/${index + 1}`; };
    const img = $("#image-rendered");
    setStatus(status, "Rendering…");
    img.onload = () => setStatus(status, `${img.naturalWidth} x ${img.naturalHeight} pixels`);
    img.onerror = () => setStatus(status, "The image cannot be rendered", true);
    img.src = `/dicom-web/studies/${studyUid}/series/${seriesUid}/instances/${sopUid}/rendered`;
  } catch (error) {
    setStatus(status, `Cannot show the image: ${error.message}`, true);
  }
}

// -- live associations ----------------------------------------------------------------------

async function openAssociations() {
  show("associations");
  const status = $("#associations-summary");
  const body = $("#associations-table tbody");
  setStatus(status, "Loading…");
  try {
    let snapshot;
    try {
      snapshot = await getJson("/api/associations");
    } catch (error) {
      if (error.status !== 404) throw error;
      snapshot = await getJson("/associations");
    }
    const associations = Array.isArray(snapshot) ? snapshot : (snapshot.associations || []);
    body.replaceChildren();
    for (const item of associations) {
      const row = document.createElement("tr");
      cell(row, item.association_id || "");
      cell(row, item.calling_ae_title || "");
      cell(row, item.called_ae_title || "");
      cell(row, `${item.peer_address || ""}:${item.peer_port || ""}`);
      cell(row, item.state || "");
      cell(row, item.duration_s === undefined ? "" : String(item.duration_s));
      cell(row, String((item.counters && item.counters.instances_stored) || 0));
      body.appendChild(row);
    }
    const total = snapshot.max_associations === undefined
      ? "" : ` (at most ${snapshot.max_associations} at once)`;
    setStatus(status, `${associations.length} live associations${total}`);
  } catch (error) {
    setStatus(status, `Cannot load the associations: ${error.message}`, true);
  }
}

// -- health -------------------------------------------------------------------------------------

function flatten(prefix, item, rows) {
  if (item !== null && typeof item === "object" && !Array.isArray(item)) {
    for (const [key, nested] of Object.entries(item)) {
      flatten(prefix ? `${prefix}.${key}` : key, nested, rows);
    }
  } else {
    rows.push([prefix, Array.isArray(item) ? item.join(", ") : String(item)]);
  }
  return rows;
}

async function openHealth() {
  show("health");
  const summary = $("#health-summary");
  const body = $("#health-table tbody");
  setStatus(summary, "Checking…");
  const response = await fetch("/readyz", { headers: { Accept: "application/json" } })
    .catch((error) => ({ ok: false, status: 0, json: async () => ({ error: String(error) }) }));
  let report = {};
  try { report = await response.json(); } catch (_) { report = {}; }
  body.replaceChildren();
  for (const [name, result] of flatten("", report, [])) {
    const row = document.createElement("tr");
    cell(row, name);
    const td = cell(row, result);
    if (result === "true" || result === "ok") td.className = "ok";
    if (result === "false") td.className = "bad";
    body.appendChild(row);
  }
  summary.replaceChildren();
  const verdict = document.createElement("span");
  verdict.className = response.ok ? "ok" : "bad";
  verdict.textContent = response.ok ? "Ready" : `Not ready (HTTP ${response.status})`;
  summary.appendChild(verdict);
}

// -- routing ------------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  switch (parts[0]) {
    case "study": return openStudy(parts[1]);
    case "image": return openImage(parts[1], parts[2], Number(parts[3]) || 1);
    case "associations": return openAssociations();
    case "health": return openHealth();
    default: show("studies"); return undefined;
  }
}

$("#search-form").addEventListener("submit", searchStudies);
window.addEventListener("hashchange", route);
route();
