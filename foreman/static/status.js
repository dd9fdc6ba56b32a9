// CrowdCompute status page: polls api/status (relative, so the page works on the
// foreman's own port and behind a proxy such as Jupyter's /crowdcompute/) and
// draws workers, jobs and a throughput chart. Plain DOM, no library.
"use strict";

const POLL_MS = 1000;
const HISTORY_SECONDS = 600;
const MIN_SPAN_SECONDS = 60;
const SMOOTH_SECONDS = 10;
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 800, height: 180, left: 46, right: 10, top: 10, bottom: 22 };

// Items done per job at recent polls, [time, done] oldest first, for items/s and time left.
const jobHistory = new Map();
const jobRates = new Map();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    // Through the CSSOM: the page's Content-Security-Policy forbids style attributes.
    else if (key === "width") node.style.width = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function formatRate(rate) {
  if (!isFinite(rate) || rate <= 0) return "0";
  if (rate >= 100) return rate.toFixed(0);
  if (rate >= 10) return rate.toFixed(1);
  return rate.toFixed(2);
}

function formatDuration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function formatAge(seconds) {
  return seconds < 120 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
}

function setConnection(state, text) {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  node.textContent = text;
}

function showProblem(text) {
  const node = document.getElementById("problem");
  node.hidden = !text;
  node.textContent = text || "";
}

// --- rates ------------------------------------------------------------------

function updateRates(status) {
  // As the notebook's widget: items finished over the last SMOOTH_SECONDS (the job's whole
  // life while it is younger), so the number neither jumps with each chunk nor lags for long.
  const now = status.time;
  const seen = new Set();
  for (const job of status.jobs) {
    seen.add(job.id);
    const done = job.completed + job.failed + (job.in_progress || 0);
    const history = jobHistory.get(job.id) || [];
    history.push([now, done]);
    while (history.length > 2 && history[1][0] <= now - SMOOTH_SECONDS) history.shift();
    jobHistory.set(job.id, history);
    const [then, before] = history[0];
    if (now > then) jobRates.set(job.id, Math.max(0, (done - before) / (now - then)));
  }
  for (const id of [...jobHistory.keys()]) {
    if (!seen.has(id)) {
      jobHistory.delete(id);
      jobRates.delete(id);
    }
  }
}

function throughputPoints(throughput) {
  // Samples are [time, items finished so far]; a point is the rate over the last SMOOTH_SECONDS,
  // so that work finishing in chunks draws a level line, not a sawtooth.
  const samples = throughput.samples || [];
  const points = [];
  let start = 0;
  for (let i = 1; i < samples.length; i++) {
    const [t1, n1] = samples[i];
    while (start < i - 1 && t1 - samples[start + 1][0] >= SMOOTH_SECONDS) start++;
    const [t0, n0] = samples[start];
    if (t1 > t0) points.push([t1, Math.max(0, (n1 - n0) / (t1 - t0))]);
  }
  return points;
}

// --- drawing ----------------------------------------------------------------

function renderSummary(status) {
  const busy = status.busy ?? status.workers.reduce((sum, w) => sum + w.busy, 0);
  const runningJobs = status.jobs.filter((job) => job.state === "running");
  const running = runningJobs.length;
  // The sum of the rates the jobs table shows, so the two never disagree (0 once nothing runs).
  const latest = runningJobs.reduce((sum, job) => sum + (jobRates.get(job.id) || 0), 0);
  document.getElementById("stat-workers").textContent = status.workers_total ?? status.workers.length;
  document.getElementById("stat-slots").textContent = `${busy}/${status.slots}`;
  document.getElementById("stat-jobs").textContent = running;
  document.getElementById("stat-rate").textContent = formatRate(latest);
  document.getElementById("stat-clients").textContent = status.clients ?? "–";
}

function renderJobs(status) {
  const body = document.querySelector("#jobs tbody");
  const rows = status.jobs.map((job) => {
    // Items finished inside running tasks count too (the workers report them): the bar moves per item.
    const running = job.state === "running";
    const inProgress = running ? job.in_progress || 0 : 0;
    const done = job.completed + job.failed + inProgress;
    const total = Math.max(job.total, 0);
    const share = (n) => (total ? (100 * n) / total : 100);
    // As the notebook's widget: a job with a failed item is "failed" once over, and red at once.
    const state = job.state === "done" && job.failed ? "failed" : job.state;
    const colour = job.failed && job.state !== "cancelled" ? "failed" : state;
    const bar = el("div", {
      class: `bar ${colour}` + (job.state === "running" ? "" : " finished"),
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": String(total),
      "aria-valuenow": String(done),
      "aria-label": `${job.name || "job"} progress`,
    },
      el("div", { class: "done", width: `${share(job.completed + inProgress).toFixed(2)}%` }),
      el("div", { class: "failed", width: `${share(job.failed).toFixed(2)}%` }),
      el("span", { class: "label" }, `${Math.floor(share(done))}%`),
    );
    const rate = jobRates.get(job.id);
    const left = running && rate > 0 ? formatDuration((total - done) / rate) : "–";
    const notes = [];
    if (job.untrusted_workers) notes.push(`${job.untrusted_workers} untrusted workers`);
    if (running && job.waiting) notes.push(job.waiting);
    const noted = notes.length ? [el("span", { class: "id", title: "notes" }, notes.join(" · "))] : [];
    return el("tr", { "data-job-id": job.id, "data-state": state },
      el("td", {}, job.name || "job", el("span", { class: "id", title: job.id }, job.id.slice(0, 8)), ...noted),
      el("td", {}, el("span", { class: `badge ${state}` }, state)),
      el("td", {}, bar),
      el("td", { class: "count" }, `${done}/${total}`),
      el("td", {}, String(job.failed)),
      el("td", {}, running && rate !== undefined ? formatRate(rate) : "–"),
      el("td", {}, left),
    );
  });
  body.replaceChildren(...rows);
  document.getElementById("no-jobs").hidden = rows.length > 0;
}

function renderWorkers(status) {
  const body = document.querySelector("#workers tbody");
  const rows = status.workers.map((worker) => {
    const slots = el("span", { class: "slots", title: `${worker.busy} of ${worker.slots} slots busy` });
    for (let i = 0; i < worker.slots; i++) slots.append(el("span", { class: i < worker.busy ? "slot busy" : "slot" }));
    const tasks = el("td", { class: "tasks" });
    const leased = worker.tasks || [];
    for (const task of leased.filter((t) => !t.queued)) {
      const items = task.items === 1 ? "1 item" : `${task.items} items`;
      tasks.append(el("span", { class: "chip", title: `job ${task.job}` }, `${task.name || "job"} #${task.task} · ${items}`));
    }
    const waiting = leased.filter((t) => t.queued).length;
    if (waiting) tasks.append(el("span", { class: "chip queued", title: "sent ahead, waiting for a free slot on the worker" }, `+${waiting} queued`));
    if (!leased.length) tasks.append(el("span", { class: "empty" }, "idle"));
    const state = worker.quarantined ? "quarantined" : worker.draining ? "draining" : "up";
    // Invited volunteers show their identity (the invite's name), and whether their results are trusted.
    const who = worker.identity
      ? [el("span", { class: "id", title: "volunteer" }, `${worker.identity}${worker.trusted ? "" : " · untrusted"}`)]
      : [];
    // What it offers to jobs that need it: resources (gpu=1) and labels (site=lab1).
    const offers = [
      ...Object.entries(worker.resources || {}).map(([k, v]) => `${k}=${formatAmount(v)}`),
      ...Object.entries(worker.labels || {}).map(([k, v]) => `${k}=${v}`),
    ].join(", ");
    return el("tr", { "data-worker": worker.name },
      el("td", {}, worker.name, ...who, ...(offers ? [el("div", { class: "offers" }, offers)] : [])),
      el("td", { class: "slot-cell" }, slots, `${worker.busy}/${worker.slots}`),
      el("td", {}, String(worker.tasks_done ?? "–")),
      tasks,
      el("td", {}, el("span", { class: `badge ${state === "up" ? "done" : state}` }, state)),
    );
  });
  body.replaceChildren(...rows);
  document.getElementById("no-workers").hidden = rows.length > 0;
  // A big crowd is listed in part (the foreman's STATUS_WORKERS_SHOWN): say how many are not.
  const more = (status.workers_total ?? rows.length) - rows.length;
  const note = document.getElementById("more-workers");
  note.hidden = more <= 0;
  note.textContent = more > 0 ? `and ${more} more workers (the first ${rows.length} by name are listed)` : "";
}

function formatAmount(value) {
  for (const [unit, size] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["KB", 1e3]]) {
    if (value >= size && value % (size / 1000) === 0) return `${value / size}${unit}`;
  }
  return String(value);
}

function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function renderChart(status, points) {
  const chart = document.getElementById("chart");
  const { width, height, left, right, top, bottom } = CHART;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const now = status.time;
  // The window grows with the history, from one minute up to ten, so a young foreman's work shows.
  const samples = (status.throughput && status.throughput.samples) || [];
  const oldest = samples.length ? samples[0][0] : now;
  const span = Math.min(HISTORY_SECONDS, Math.max(MIN_SPAN_SECONDS, now - oldest));
  const visible = points.filter(([t]) => t >= now - span);
  const top_ = niceCeiling(Math.max(0, ...visible.map(([, r]) => r)));
  const x = (t) => left + plotWidth * (1 - (now - t) / span);
  const y = (r) => top + plotHeight * (1 - r / top_);
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = top_ * fraction;
    nodes.push(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    nodes.push(svg("text", { class: "axis-label", x: left - 6, y: y(value) + 4, "text-anchor": "end" }, formatRate(value)));
  }
  for (const [seconds, label] of [[span, `-${formatAge(span)}`], [span / 2, `-${formatAge(span / 2)}`], [0, "now"]]) {
    const anchor = seconds === 0 ? "end" : seconds === span ? "start" : "middle";
    nodes.push(svg("text", { class: "axis-label", x: x(now - seconds), y: height - 6, "text-anchor": anchor }, label));
  }
  if (visible.length) {
    const line = visible.map(([t, r]) => `${x(t).toFixed(1)},${y(r).toFixed(1)}`).join(" ");
    const first = x(visible[0][0]).toFixed(1);
    const last = x(visible[visible.length - 1][0]).toFixed(1);
    nodes.push(svg("polygon", { class: "area", points: `${first},${y(0)} ${line} ${last},${y(0)}` }));
    nodes.push(svg("polyline", { class: "line", points: line }));
  }
  chart.replaceChildren(...nodes);
  document.getElementById("chart-window").textContent = `items finished per second, last ${formatAge(span)}`;
  chart.dataset.points = String(visible.length);
  chart.dataset.maxRate = String(Math.max(0, ...visible.map(([, r]) => r)));
}

function render(status) {
  updateRates(status);
  const points = throughputPoints(status.throughput || {});
  renderSummary(status);
  renderChart(status, points);
  renderJobs(status);
  renderWorkers(status);
  document.getElementById("updated").textContent = new Date(status.time * 1000).toLocaleTimeString();
}

// --- polling ----------------------------------------------------------------

async function poll() {
  try {
    const response = await fetch("api/status", { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401 || response.status === 403) {
      setConnection("denied", "not authenticated");
      showProblem(await response.text());
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${(await response.text()).slice(0, 300)}`);
    const status = await response.json();
    render(status);
    showProblem("");
    setConnection("live", "live");
  } catch (error) {
    setConnection("offline", "offline");
    showProblem(`Cannot reach the foreman: ${error.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
