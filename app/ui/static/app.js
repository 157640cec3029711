// API timestamps carry their UTC offset; an older server's naive ones are UTC too.
function utc(ts) {
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(ts) ? ts : ts + "Z");
}

// Live updates: poll the JSON API (the session cookie authenticates) and patch the page.
function pct(job) { return job.images_requested ? Math.min(100, Math.round(100 * job.images_done / job.images_requested)) : 0; }
function fmtEta(s) { if (s == null) return "–"; if (s < 90) return Math.round(s) + " s"; return Math.round(s / 60) + " min"; }

async function refreshJobs() {
  const table = document.getElementById("jobs-table");
  if (!table) return;
  const status = table.dataset.status;
  const r = await fetch("/v1/jobs?limit=100" + (status ? "&status=" + status : ""), { credentials: "same-origin" });
  if (!r.ok) return;
  const page = await r.json();
  for (const job of page.items) {
    const row = document.getElementById("job-" + job.id);
    if (!row) { if (!status || status === job.status) { location.reload(); return; } continue; }
    row.querySelector(".badge").textContent = job.status;
    row.querySelector(".badge").className = "badge " + job.status;
    row.querySelector(".bar > span").style.width = pct(job) + "%";
    row.querySelector(".done").textContent = job.images_done + " / " + job.images_requested;
    row.querySelector(".eta").textContent = fmtEta(job.eta_seconds);
  }
}

async function refreshJob() {
  const el = document.getElementById("job-live");
  if (!el) return;
  const r = await fetch("/v1/jobs/" + el.dataset.id, { credentials: "same-origin" });
  if (!r.ok) return;
  const job = await r.json();
  el.querySelector(".badge").textContent = job.status;
  el.querySelector(".badge").className = "badge " + job.status;
  el.querySelector(".bar > span").style.width = pct(job) + "%";
  el.querySelector(".pct").textContent = pct(job) + " %";
  el.querySelector(".done").textContent = job.images_done + " / " + job.images_requested;
  el.querySelector(".eta").textContent = fmtEta(job.eta_seconds);
  const started = job.started_at ? utc(job.started_at) : null;
  if (started && job.images_done) {
    const secs = Math.max(1, (Date.now() - started.getTime()) / 1000);
    el.querySelector(".overall").textContent = (job.images_done / secs).toFixed(2) + " img/s";
  }
  el.querySelector(".rate").textContent = job.sampling_img_per_s ? job.sampling_img_per_s.toFixed(2) + " img/s" : "–";
  live = { job: job, seen: Date.now() };
  if (el.dataset.status !== job.status && ["succeeded", "failed", "canceled"].includes(job.status)) location.reload();
}

// Between polls, progress and ETA move at the workers' sampling rate (from the last report)
// instead of jumping by whole batches: shown = done + rate x (time since that report).
let live = null;
function tick() {
  const el = document.getElementById("job-live");
  if (!el || !live || live.job.status !== "running" || !live.job.sampling_img_per_s) return;
  const job = live.job, rate = job.sampling_img_per_s;
  const since = job.progress_updated_at ? (Date.now() - utc(job.progress_updated_at).getTime()) / 1000 : (Date.now() - live.seen) / 1000;
  const shown = Math.min(job.images_requested, job.images_done + rate * Math.max(0, since));
  const p = Math.min(100, 100 * shown / job.images_requested);
  el.querySelector(".bar > span").style.width = p.toFixed(1) + "%";
  el.querySelector(".pct").textContent = Math.floor(p) + " %";
  el.querySelector(".done").textContent = Math.floor(shown) + " / " + job.images_requested;
  el.querySelector(".eta").textContent = fmtEta((job.images_requested - shown) / rate);
}

function poseMode() {
  const preset = document.getElementById("pose_preset");
  const sliders = document.getElementById("pose-sliders");
  if (!preset || !sliders) return;
  sliders.style.display = preset.value === "custom" ? "block" : "none";
}

function sliderSum() {
  const inputs = document.querySelectorAll("#pose-sliders input[type=range]");
  let sum = 0;
  inputs.forEach(i => { sum += Number(i.value); document.getElementById("v-" + i.name).textContent = i.value + "%"; });
  const out = document.getElementById("pose-sum");
  if (out) { out.textContent = sum + " %"; out.style.color = sum === 100 ? "" : "var(--bad)"; }
}

document.addEventListener("DOMContentLoaded", () => {
  refreshJobs(); refreshJob(); poseMode(); sliderSum();
  setInterval(() => { refreshJobs(); refreshJob(); }, 1500);
  setInterval(tick, 250);
  const preset = document.getElementById("pose_preset");
  if (preset) preset.addEventListener("change", poseMode);
  document.querySelectorAll("#pose-sliders input[type=range]").forEach(i => i.addEventListener("input", sliderSum));
  document.querySelectorAll("form[data-confirm]").forEach(f => f.addEventListener("submit", e => {
    if (!confirm(f.dataset.confirm)) e.preventDefault();
  }));
});

// The order form's hints and defaults follow the model chosen: reload the form for it.
document.addEventListener("DOMContentLoaded", () => {
  const select = document.getElementById("model");
  if (select) select.addEventListener("change", () => {
    location.href = "/ui/orders/new?model=" + encodeURIComponent(select.value);
  });
});
