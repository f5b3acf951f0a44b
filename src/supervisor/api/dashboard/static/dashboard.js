// The trio-supervisor dashboard: one event stream in, the management API's routes out.
// The key stays in sessionStorage (this tab only) and travels as Authorization: Bearer;
// everything the server sent is put in the page as text, never as HTML.
"use strict";

const KEY = "trio-supervisor.management-key";
const SVG = "http://www.w3.org/2000/svg";
const KEEP = 300; // samples per model version in the charts (5 minutes at 1 a second)

const state = {
  key: null,
  keyRequired: true,
  reader: null,
  offset: 0, // server time minus browser time, seconds
  models: new Map(), // "name/version" -> the latest model view
  cards: new Map(), // "name/version" -> its card's elements
  series: new Map(), // "name/version" -> samples, oldest first
  events: [],
  server: null, // version, pid, startedAt
  retry: null,
  delay: 500, // before the next connection; doubles while streams fail or end at once
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function headers() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

// ---- signing in and the event stream -------------------------------------------------

function start() {
  state.keyRequired = document.body.dataset.key !== "none";
  state.key = sessionStorage.getItem(KEY);
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("models").addEventListener("click", onModelClick);
  if (state.keyRequired && !state.key) showSignIn("");
  else connect();
  setInterval(tick, 1000); // uptimes move on between the server's messages
}

function tick() {
  renderServer();
  for (const [id, card] of state.cards) {
    const model = state.models.get(id);
    if (model) renderWorkers(card, model);
  }
}

function showSignIn(message) {
  stopStream();
  $("main").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  setConnection("not connected", "off");
  $("key").focus();
}

function signIn(event) {
  event.preventDefault();
  state.key = $("key").value.trim();
  $("key").value = "";
  connect();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  state.key = null;
  showSignIn("Signed out.");
}

function stopStream() {
  clearTimeout(state.retry);
  if (state.reader) state.reader.cancel().catch(() => {});
  state.reader = null;
}

function setConnection(text, kind) {
  const pill = $("connection");
  pill.textContent = text;
  pill.className = `pill ${kind}`;
}

async function connect() {
  stopStream();
  setConnection("connecting", "wait");
  let response;
  try {
    response = await fetch("/dashboard/events", { headers: headers(), cache: "no-store" });
  } catch (error) {
    return reconnect();
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    state.key = null;
    return showSignIn("The key was refused: use the management key.");
  }
  if (!response.ok || !response.body) return reconnect();
  if (state.key) sessionStorage.setItem(KEY, state.key);
  $("signin").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = !state.keyRequired;
  setConnection("live", "on");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  state.reader = reader;
  const opened = Date.now();
  await read(reader);
  if (Date.now() - opened > 2000) state.delay = 500; // a stream that lasted: the server ended it
  if (state.reader === reader) reconnect();
}

function reconnect() {
  setConnection("reconnecting", "wait");
  clearTimeout(state.retry);
  state.retry = setTimeout(connect, state.delay);
  state.delay = Math.min(state.delay * 2, 5000);
}

async function read(reader) {
  let pending = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      return;
    }
    if (chunk.done) return;
    pending += chunk.value;
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      dispatch(pending.slice(0, end));
      pending = pending.slice(end + 2);
    }
  }
}

function dispatch(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (!data.length) return; // a comment
  const message = JSON.parse(data.join("\n"));
  if (kind === "snapshot") onSnapshot(message);
  else if (kind === "state") onState(message);
  else if (kind === "event") onEvent(message);
}

// ---- what the stream says --------------------------------------------------------------

function onSnapshot(snapshot) {
  state.server = snapshot.server;
  state.series = new Map(Object.entries(snapshot.series));
  state.events = snapshot.events.slice().reverse();
  renderTimeline();
  onState(snapshot);
}

function onState(message) {
  state.offset = message.time - Date.now() / 1000;
  const seen = new Set();
  for (const model of message.models) {
    const id = `${model.name}/${model.version}`;
    seen.add(id);
    state.models.set(id, model);
    addSample(id, model.sample);
    renderModel(id, model);
  }
  for (const [id, card] of state.cards) {
    if (!seen.has(id)) {
      card.root.remove();
      state.cards.delete(id);
      state.models.delete(id);
    }
  }
  renderServer();
}

function addSample(id, sample) {
  if (!sample) return;
  const samples = state.series.get(id) || [];
  if (samples.length && samples[samples.length - 1].time >= sample.time) return;
  samples.push(sample);
  if (samples.length > KEEP) samples.splice(0, samples.length - KEEP);
  state.series.set(id, samples);
}

function onEvent(event) {
  state.events.unshift(event);
  if (state.events.length > 200) state.events.length = 200;
  renderTimeline();
}

// ---- rendering -----------------------------------------------------------------------------

function renderServer() {
  const server = state.server;
  if (!server) return;
  const now = Date.now() / 1000 + state.offset;
  const workers = [...state.models.values()].reduce((n, m) => n + m.workers.length, 0);
  const parts = [`v${server.version}`, `pid ${server.pid}`, `up ${duration(now - server.startedAt)}`];
  parts.push(`${state.models.size} model version(s), ${workers} worker(s)`);
  $("server").textContent = parts.join(" · ");
}

function renderModel(id, model) {
  let card = state.cards.get(id);
  if (!card) {
    card = newCard(id, model);
    state.cards.set(id, card);
    insertSorted(card.root, id);
  }
  card.state.textContent = model.state;
  card.state.className = `pill state-${model.state.toLowerCase()}`;
  card.isDefault.hidden = !model.isDefault;
  card.makeDefault.hidden = model.isDefault || model.state !== "READY";
  card.queue.textContent = `${model.queue.depth} / ${model.queue.capacity}`;
  card.workers.textContent = `${model.workers.length} (min ${model.minWorkers}, max ${model.maxWorkers})`;
  card.restarts.textContent = String(model.restarts);
  renderFailure(card, model.failure);
  renderFigures(card, id, model.sample);
  renderWorkers(card, model);
}

function insertSorted(root, id) {
  const models = $("models");
  const after = [...models.children].find((child) => child.dataset.model > id);
  models.insertBefore(root, after || null);
}

function newCard(id, model) {
  const field = (label, value) => el("div", { class: "field" }, el("span", { class: "label" }, label), value);
  const card = {
    state: el("span", { class: "pill" }),
    isDefault: el("span", { class: "pill default" }, "default"),
    makeDefault: el("button", { type: "button", "data-action": "default" }, "Make default"),
    queue: el("span", { class: "value" }),
    workers: el("span", { class: "value" }),
    restarts: el("span", { class: "value" }),
    failure: el("div", { class: "failure", hidden: true }),
    rps: el("span", { class: "value" }),
    p50: el("span", { class: "value" }),
    p99: el("span", { class: "value" }),
    errors: el("span", { class: "value" }),
    charts: el("div", { class: "charts" }),
    rows: el("tbody"),
    count: el("input", { type: "number", min: 0, value: model.minWorkers, class: "count" }),
    workerRows: new Map(),
  };
  card.count.setAttribute("aria-label", `workers for ${id}`);
  const scale = el("button", { type: "button", "data-action": "scale" }, "Scale");
  const title = el("h2", {}, el("span", { class: "name" }, model.name), ` / ${model.version} `);
  card.root = el(
    "article",
    { class: "model panel", "data-model": id },
    el("div", { class: "model-head" }, title, card.state, card.isDefault, card.makeDefault),
    card.failure,
    el(
      "div",
      { class: "fields" },
      field("queue", card.queue),
      field("workers", card.workers),
      field("restarts", card.restarts),
      field("requests/s", card.rps),
      field("p50 ms", card.p50),
      field("p99 ms", card.p99),
      field("errors/s", card.errors),
    ),
    card.charts,
    el("div", { class: "scale" }, el("label", {}, "Workers ", card.count), scale),
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { class: "workers" },
        el("thead", {}, row("th", ["worker", "pid", "state", "uptime", "restarts", "batches", "memory", "GPU", "last exit", ""])),
        card.rows,
      ),
    ),
  );
  return card;
}

function row(tag, cells) {
  return el("tr", {}, ...cells.map((cell) => el(tag, {}, cell)));
}

function renderFailure(card, failure) {
  card.failure.hidden = !failure;
  if (!failure) return;
  card.failure.replaceChildren(
    el("p", { class: "error" }, `FAILED: ${failure.reason}`),
    el("pre", { class: "log" }, failure.logTail.join("\n")),
  );
}

function renderFigures(card, id, sample) {
  const fmt = (value) => (value === null || value === undefined ? "–" : String(value));
  card.rps.textContent = fmt(sample && sample.rps);
  card.p50.textContent = fmt(sample && sample.p50);
  card.p99.textContent = fmt(sample && sample.p99);
  card.errors.textContent = fmt(sample && sample.errors);
  const samples = state.series.get(id) || [];
  card.charts.replaceChildren(
    chart("requests/s", samples, [["rps", "line-a"]]),
    chart("latency ms (p50, p99)", samples, [["p50", "line-a"], ["p99", "line-b"]]),
    chart("errors/s", samples, [["errors", "line-c"]]),
  );
}

function chart(title, samples, lines) {
  const width = 300;
  const height = 60;
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "chart", role: "img" });
  box.setAttribute("aria-label", title);
  box.append(svg("rect", { x: 0, y: 0, width, height, class: "chart-bg" }));
  const values = samples.flatMap((s) => lines.map(([key]) => s[key]).filter((v) => v !== null));
  const top = Math.max(1e-9, ...values);
  const span = Math.min(KEEP, Math.max(60, samples.length)); // at least the last minute
  const x = (i) => ((i + span - samples.length) / (span - 1)) * width;
  for (const [key, cls] of lines) {
    const points = samples
      .map((s, i) => [i, s[key]])
      .filter(([, v]) => v !== null)
      .map(([i, v]) => `${x(i)},${height - 2 - (v / top) * (height - 4)}`);
    if (points.length) box.append(svg("polyline", { points: points.join(" "), class: `line ${cls}` }));
  }
  const label = el("figcaption", {}, `${title} · max ${values.length ? round(top) : "–"}`);
  return el("figure", { class: "chart-box" }, box, label);
}

function round(value) {
  return value >= 100 ? Math.round(value) : Math.round(value * 100) / 100;
}

function renderWorkers(card, model) {
  const seen = new Set();
  for (const worker of model.workers) {
    seen.add(worker.id);
    let cells = card.workerRows.get(worker.id);
    if (!cells) {
      cells = newWorkerRow(card, worker.id);
      card.workerRows.set(worker.id, cells);
    }
    const now = Date.now() / 1000 + state.offset;
    cells.label.textContent = worker.label;
    cells.pid.textContent = worker.pid === null ? "–" : String(worker.pid);
    cells.state.textContent = worker.state;
    cells.uptime.textContent = worker.state === "DEAD" ? "–" : duration(now - worker.startedAt);
    cells.restarts.textContent = String(worker.restarts);
    cells.batches.textContent = String(worker.batches);
    cells.memory.textContent = worker.memory === null ? "–" : `${(worker.memory / 1048576).toFixed(1)} MiB`;
    cells.gpu.textContent = worker.gpu === null ? "–" : worker.gpu;
    cells.exit.textContent = worker.lastExit ? exitText(worker.lastExit) : "–";
    cells.restart.disabled = !["READY", "BUSY"].includes(worker.state) || model.state !== "READY";
  }
  for (const [id, cells] of card.workerRows) {
    if (!seen.has(id)) {
      cells.row.remove();
      card.workerRows.delete(id);
    }
  }
}

function newWorkerRow(card, id) {
  const names = ["label", "pid", "state", "uptime", "restarts", "batches", "memory", "gpu", "exit"];
  const cells = {};
  for (const name of names) cells[name] = el("td", { class: `cell-${name}` });
  cells.restart = el("button", { type: "button", "data-action": "restart", "data-worker": id }, "Restart");
  const log = el("button", { type: "button", "data-action": "log", "data-worker": id }, "Log");
  const actions = el("td", { class: "cell-actions" }, log, cells.restart);
  cells.row = el("tr", { "data-worker": id }, ...names.map((name) => cells[name]), actions);
  card.rows.append(cells.row);
  return cells;
}

function exitText(exit) {
  return `#${exit.incarnation}: ${exit.summary}`;
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function renderTimeline() {
  const items = state.events.slice(0, 100).map((event) =>
    el(
      "li",
      { class: `event kind-${event.kind.replace(".", "-")}` },
      el("time", {}, new Date(event.time * 1000).toLocaleTimeString()),
      el("span", { class: "kind" }, event.kind),
      el("span", { class: "where" }, `${event.model}/${event.version}`),
      el("span", { class: "message" }, event.message),
    ),
  );
  $("timeline").replaceChildren(...items);
}

// ---- actions: the management API's own routes, each confirmed first ------------------

function onModelClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const id = button.closest("[data-model]").dataset.model;
  const model = state.models.get(id);
  if (!model) return;
  const base = `/models/${encodeURIComponent(model.name)}/${encodeURIComponent(model.version)}`;
  const action = button.dataset.action;
  if (action === "log") return showLog(model, base, button.dataset.worker);
  if (action === "scale") {
    const count = Number(state.cards.get(id).count.value);
    if (!Number.isInteger(count) || count < 0) return notice(`${count} is not a number of workers`, true);
    return confirmThen(`Scale ${id} to ${count} worker(s)?`, "PUT", `${base}?min_worker=${count}`);
  }
  if (action === "default") {
    return confirmThen(`Make version ${model.version} the default of ${model.name}?`, "PUT", `${base}/set-default`);
  }
  if (action === "restart") {
    const worker = button.dataset.worker;
    return confirmThen(`Restart worker ${worker} of ${id}?`, "POST", `${base}/workers/${encodeURIComponent(worker)}/restart`);
  }
}

function confirmThen(text, method, url) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    () => {
      if (dialog.returnValue === "ok") send(method, url);
    },
    { once: true },
  );
  dialog.showModal();
}

async function send(method, url) {
  let response;
  try {
    response = await fetch(url, { method, headers: headers(), cache: "no-store" });
  } catch (error) {
    return notice(`${method} ${url}: the server did not answer`, true);
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) return showSignIn("The key was refused: use the management key.");
  notice(body.status || body.message || `${response.status}`, !response.ok);
}

function notice(text, isError) {
  const box = $("notice");
  box.textContent = text;
  box.className = isError ? "notice error" : "notice";
}

async function showLog(model, base, workerId) {
  let response;
  try {
    response = await fetch(base, { headers: headers(), cache: "no-store" });
  } catch (error) {
    return notice("the server did not answer", true);
  }
  if (response.status === 401) return showSignIn("The key was refused: use the management key.");
  const body = await response.json().catch(() => null);
  const described = Array.isArray(body) ? body[0] : null;
  const worker = described && described.workers.find((w) => w.id === workerId);
  if (!worker) return notice(`worker ${workerId} is gone`, true);
  $("logs-title").textContent = `${model.name}/${model.version} ${workerId}#${worker.incarnation} (pid ${worker.pid})`;
  const lines = worker.logTail.length ? worker.logTail : (worker.lastExit ? worker.lastExit.logTail : []);
  $("logs-text").textContent = lines.length ? lines.join("\n") : "(no output yet)";
  $("logs").showModal();
}

document.addEventListener("DOMContentLoaded", start);
