// DenseDPO annotation page: two canvases driven by one clock, a segment timeline, keyboard labels.
"use strict";
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const $ = (id) => document.getElementById(id);
const state = { pair: null, sheets: [], frame: 0, time: 0, playing: false, labels: [], seg: 0,
                whole: null, started: 0, last: 0 };

function api(path, options = {}) {
  options.headers = Object.assign({ "X-Token": token, "Content-Type": "application/json" },
                                  options.headers || {});
  return fetch(path, options).then(async (r) => {
    const body = r.headers.get("Content-Type").startsWith("application/json") ? await r.json() : r;
    if (!r.ok) throw Object.assign(new Error(body.error || r.statusText), { status: r.status });
    return body;
  });
}

function status(text, error = false) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function annotator() { return $("annotator").value.trim(); }
function segmentOf(frame) { const p = state.pair; return Math.min(Math.floor(frame / p.frames_per_segment), p.num_segments - 1); }

function loadImage(url) {
  return new Promise((resolve, reject) => { const im = new Image(); im.onload = () => resolve(im);
    im.onerror = () => reject(new Error("cannot load " + url)); im.src = url; });
}

async function next() {
  if (!annotator()) { status("Enter your annotator id first.", true); return; }
  localStorage.setItem("annotator", annotator());
  document.body.dataset.ready = "";
  const p = await api(`/api/next?annotator=${encodeURIComponent(annotator())}`);
  $("progress").textContent = `${p.progress.labeled_by_you} labeled by you; ${p.progress.complete} of ${p.progress.total} pairs complete`;
  if (p.done) { state.pair = null; $("prompt").textContent = "No pair left for you. Thank you!"; document.body.dataset.ready = "done"; return; }
  const q = (side) => `/api/frames?pair=${encodeURIComponent(p.pair)}&side=${side}&annotator=${encodeURIComponent(annotator())}&token=${encodeURIComponent(token)}`;
  state.sheets = await Promise.all([loadImage(q("left")), loadImage(q("right"))]);
  Object.assign(state, { pair: p, frame: 0, time: 0, playing: false, labels: Array(p.num_segments).fill(null),
                         seg: 0, whole: null, started: performance.now() });
  $("prompt").textContent = p.prompt;
  $("broken").checked = false; $("comment").value = ""; $("whole-value").textContent = "";
  const w = state.sheets[0].width / p.num_frames, h = state.sheets[0].height;
  for (const id of ["left", "right"]) { $(id).width = w; $(id).height = h; }
  buildTimeline(); draw(); status(`Pair ${p.pair}`);
  document.body.dataset.ready = p.pair;
}

function buildTimeline() {
  const t = $("timeline"); t.innerHTML = "";
  state.labels.forEach((_, k) => { const d = document.createElement("div"); d.className = "seg"; d.dataset.k = k;
    d.onclick = () => { state.seg = k; state.frame = k * state.pair.frames_per_segment; state.time = state.frame / state.pair.fps; draw(); };
    t.appendChild(d); });
}

function draw() {
  const p = state.pair; if (!p) return;
  ["left", "right"].forEach((id, i) => { const c = $(id), ctx = c.getContext("2d"); ctx.imageSmoothingEnabled = false;
    ctx.drawImage(state.sheets[i], state.frame * c.width, 0, c.width, c.height, 0, 0, c.width, c.height); });
  state.seg = segmentOf(state.frame);
  $("frame").textContent = `frame ${state.frame + 1} / ${p.num_frames}, segment ${state.seg + 1} / ${p.num_segments}`;
  document.querySelectorAll(".seg").forEach((d, k) => { const v = state.labels[k];
    d.className = "seg" + (v ? " " + v : "") + (k === state.seg ? " current" : "");
    d.textContent = v ? { left: "Left", right: "Right", tie: "Tie" }[v] : `${k + 1}`; });
  $("play").textContent = state.playing ? "Pause" : "Play";
}

function tick(now) {
  const p = state.pair;
  if (p && state.playing) {
    const dt = (now - (state.last || now)) / 1000 * parseFloat($("speed").value);
    state.time += dt;
    let f = Math.floor(state.time * p.fps);
    if ($("loop").checked) { const s = state.seg, a = s * p.frames_per_segment,
      b = s === p.num_segments - 1 ? p.num_frames : Math.min(a + p.frames_per_segment, p.num_frames);
      if (f >= b || f < a) { f = a; state.time = a / p.fps; } }
    if (f >= p.num_frames) { f = 0; state.time = 0; }
    if (f !== state.frame) { state.frame = f; draw(); }
  }
  state.last = now; requestAnimationFrame(tick);
}

function step(delta) { const p = state.pair; state.playing = false;
  state.frame = (state.frame + delta + p.num_frames) % p.num_frames; state.time = state.frame / p.fps; draw(); }

function mark(value) { const p = state.pair; state.labels[state.seg] = value;
  if (state.seg < p.num_segments - 1) { state.frame = (state.seg + 1) * p.frames_per_segment; state.time = state.frame / p.fps; }
  draw(); }

async function submit() {
  const p = state.pair; if (!p || state.submitting) return;
  const broken = $("broken").checked;
  if (!broken && state.labels.some((v) => v === null)) { status("Label every segment (1 / 2 / 0) or mark the pair broken.", true); return; }
  const body = { annotator: annotator(), pair: p.pair, broken, comment: $("comment").value,
                 segments: state.labels.some((v) => v === null) ? null : state.labels, whole: state.whole,
                 seconds: (performance.now() - state.started) / 1000 };
  state.submitting = true;
  try { await api("/api/label", { method: "POST", body: JSON.stringify(body) }); status(`Saved ${p.pair}`); await next(); }
  catch (e) {
    status(e.message, true);
    if (e.status === 409) await next().then(() => status(e.message, true)).catch((x) => status(x.message, true));
  }
  finally { state.submitting = false; }
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type !== "checkbox") { if (e.key === "Enter" && e.target.id === "annotator") next().catch((x) => status(x.message, true)); return; }
  if (!state.pair) return;
  const actions = { " ": () => { state.playing = !state.playing; draw(); }, ArrowLeft: () => step(-1), ArrowRight: () => step(1),
                    "1": () => mark("left"), "2": () => mark("right"), "0": () => mark("tie"),
                    l: () => { $("loop").checked = !$("loop").checked; }, L: () => { $("loop").checked = !$("loop").checked; },
                    Enter: () => submit() };
  if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
});
$("play").onclick = () => { state.playing = !state.playing; draw(); };
$("submit").onclick = submit;
document.querySelectorAll("#whole button").forEach((b) => b.onclick = () => { state.whole = b.dataset.whole || null;
  $("whole-value").textContent = state.whole ? `(${state.whole})` : ""; });
$("annotator").value = params.get("annotator") || localStorage.getItem("annotator") || "";
requestAnimationFrame(tick);
if (annotator()) next().catch((e) => status(e.message, true)); else status("Enter your annotator id and press Enter.");
