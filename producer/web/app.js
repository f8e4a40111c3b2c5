// pixfleet upload page: one request per file (for its progress bar), then the task's
// Server-Sent Events until it is done. Plain DOM, no framework, no network but this server.
"use strict";

const PARALLEL = 3;
const queue = [];
let active = 0;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function token() {
  const field = $("token");
  const value = field.value.trim();
  if (value) sessionStorage.setItem("pixfleet-token", value);
  return value || sessionStorage.getItem("pixfleet-token") || "";
}

function withToken(url) {
  const value = token();
  if (!value) return url;
  return url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(value);
}

function relative(url) {
  // The API answers root-relative URLs; the page may itself live under a prefix.
  return url.startsWith("/") ? "." + url : url;
}

function size(bytes) {
  if (bytes >= 1048576) return (bytes / 1048576).toFixed(1) + " MB";
  if (bytes >= 1024) return (bytes / 1024).toFixed(0) + " kB";
  return bytes + " B";
}

function newCard(file) {
  const card = el("li", { class: "card uploading" });
  const head = el("div", { class: "card-head" });
  head.append(el("span", { class: "name", title: file.name }, file.name));
  const badge = el("span", { class: "badge" }, "uploading");
  head.append(badge);
  const bar = el("progress", { max: "100", value: "0" });
  const meta = el("p", { class: "meta" }, size(file.size));
  const thumbs = el("div", { class: "thumbs" });
  const links = el("ul", { class: "links" });
  card.append(head, bar, meta, thumbs, links);
  $("cards").append(card);
  return { card, badge, bar, meta, thumbs, links, results: new Map() };
}

function setState(view, state, label) {
  view.card.classList.remove("uploading", "queued", "done", "error");
  view.card.classList.add(state);
  view.badge.textContent = label || state;
}

function fail(view, error) {
  setState(view, "error");
  const reason = el("p", { class: "reason" });
  reason.textContent = error.code ? `error[${error.code}]: ${error.message}` : String(error);
  view.card.append(reason);
}

function upload(file) {
  const view = newCard(file);
  const form = new FormData();
  form.append("file", file, file.name);
  const groups = $("groups").value.trim();
  if (groups) form.append("groups", groups);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "v1/uploads");
  const value = token();
  if (value) xhr.setRequestHeader("Authorization", "Bearer " + value);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) view.bar.value = Math.round((100 * e.loaded) / e.total);
  };
  return new Promise((resolve) => {
    xhr.onload = () => { received(view, xhr); resolve(); };
    xhr.onerror = () => { fail(view, "network error: the upload did not reach the server"); resolve(); };
    xhr.send(form);
  });
}

function received(view, xhr) {
  let body = {};
  try { body = JSON.parse(xhr.responseText); } catch (_) { body = {}; }
  if (xhr.status === 401) {
    $("notice").hidden = false;
    $("notice").textContent = "The server needs an access token: enter it under Options and retry.";
    document.querySelector(".options").open = true;
  }
  if (xhr.status !== 202 || !body.tasks) {
    fail(view, body.error || `HTTP ${xhr.status}`);
    return;
  }
  const task = body.tasks[0];
  view.card.dataset.taskId = task.task_id;
  view.meta.textContent = `${view.meta.textContent} · task ${task.task_id.slice(0, 8)}`;
  setState(view, "queued", "queued");
  follow(view, task);
}

function follow(view, task) {
  const events = new EventSource(withToken(relative(task.events_url)));
  events.addEventListener("result", (e) => showResult(view, JSON.parse(e.data)));
  events.addEventListener("done", (e) => {
    const done = JSON.parse(e.data);
    setState(view, done.state === "done" ? "done" : "error", done.state);
    events.close();
  });
  events.addEventListener("stream_error", () => { view.badge.textContent = "reconnecting"; });
}

function showResult(view, result) {
  if (view.results.has(result.group)) return; // a reconnect sends results again
  view.results.set(result.group, result);
  if (result.status === "error") {
    fail(view, result.error);
    return;
  }
  const outputs = result.outputs;
  const jpegs = outputs.filter((o) => o.format === "jpeg");
  const pick = (jpegs.length ? jpegs : outputs).slice().sort((a, b) => a.width - b.width)[0];
  if (pick) {
    const img = el("img", { class: "thumb", alt: `${result.group}: ${pick.name}` });
    img.src = withToken(relative(pick.url));
    view.thumbs.append(img);
  }
  for (const output of outputs) {
    const item = el("li");
    const link = el("a", { href: withToken(relative(output.url)), target: "_blank", rel: "noopener" }, output.name);
    item.append(link, ` ${output.width}×${output.height} ${size(output.bytes)} (${result.group})`);
    view.links.append(item);
  }
}

function enqueue(files) {
  for (const file of files) queue.push(file);
  pump();
}

function pump() {
  while (active < PARALLEL && queue.length) {
    active += 1;
    upload(queue.shift()).finally(() => { active -= 1; pump(); });
  }
}

function init() {
  const input = $("files");
  const drop = $("drop");
  input.addEventListener("change", () => { enqueue([...input.files]); input.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); enqueue([...e.dataTransfer.files]); });
  const saved = sessionStorage.getItem("pixfleet-token");
  if (saved) $("token").value = saved;
}

document.addEventListener("DOMContentLoaded", init);
