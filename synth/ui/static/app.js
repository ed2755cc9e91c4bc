// vaesynth control surface: state arrives over the WebSocket (10 Hz, and at once when a knob
// moves), controls leave as JSON. Drawing happens in the next animation frame after a state
// message, and touches only what changed (the page's CPU is taken from the synth's cores); a knob
// being dragged shows the value under the pointer until it is let go (the engine's echo follows it).
"use strict";

const TOKEN = document.body.dataset.token;
const Q = "?token=" + encodeURIComponent(TOKEN);
const TRAVEL_PX = 240;  // a vertical drag this long sweeps a knob over its whole travel -1..1
const ARC = 135;  // degrees either side of 12 o'clock
const MAX_MAP_LABELS = 16;  // more snapshots than this are marked on the map without their names
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295"];

let info = null;
let state = null;
let socket = null;
let drawPending = false;
const dragging = new Map();  // knob index -> value shown while the pointer holds it
const knobEls = [];
// Knob values as received and as drawn, and controls as sent, with the wall-clock time (ms since
// the epoch) of each: benchmarks/ui_latency.py reads them to time CC-to-screen and drag-to-sound.
const recvLog = [];
const drawLog = [];
const sendLog = [];
const counts = { messages: 0 };  // state messages received
window.vaesynth = { recvLog, drawLog, sendLog, counts, get state() { return state; }, get info() { return info; } };
const drawn = new Map();  // what each part of the page shows now: a part is redrawn when its key changes

function wallMs() { return performance.timeOrigin + performance.now(); }

function remember(log, entry) {
  log.push(entry);
  if (log.length > 512) log.splice(0, 256);
}

function send(msg) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(msg));
    remember(sendLog, { t: wallMs(), msg });
  }
}

function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

// True (and remembered) when ``key`` differs from what part ``part`` was last drawn with.
function changed(part, key) {
  if (drawn.get(part) === key) return false;
  drawn.set(part, key);
  return true;
}

function setText(id, text) {
  if (changed(id, text)) document.getElementById(id).textContent = text;
}

function fmt(v) { return (v >= 0 ? "+" : "") + v.toFixed(2); }

// ------------------------------------------------------------------ knobs
function polar(deg, r) {
  const a = (deg - 90) * Math.PI / 180;
  return [50 + r * Math.cos(a), 50 + r * Math.sin(a)];
}

function arcPath(fromDeg, toDeg, r) {
  const [x0, y0] = polar(fromDeg, r), [x1, y1] = polar(toDeg, r);
  const large = Math.abs(toDeg - fromDeg) > 180 ? 1 : 0;
  const sweep = toDeg > fromDeg ? 1 : 0;
  return `M ${x0} ${y0} A ${r} ${r} 0 ${large} ${sweep} ${x1} ${y1}`;
}

function makeKnob(i, name) {
  const el = document.createElement("div");
  el.className = "knob";
  el.dataset.knob = String(i);
  el.innerHTML = `<svg viewBox="0 0 100 100" role="slider" aria-label="knob ${i + 1}">
      <path class="track" d="${arcPath(-ARC, ARC, 38)}"/><path class="arc"/><circle class="dot" r="7"/></svg>
    <div class="name"></div><div class="val">–</div><div class="cc">&nbsp;</div>
    <button type="button" class="learn">learn</button>`;
  el.querySelector(".name").textContent = name;
  const svg = el.querySelector("svg");
  let startY = 0, startV = 0;
  svg.addEventListener("pointerdown", (e) => {
    svg.setPointerCapture(e.pointerId);
    startY = e.clientY;
    startV = state ? clamp(state.knobs[i], -1, 1) : 0;
    dragging.set(i, startV);
    e.preventDefault();
  });
  svg.addEventListener("pointermove", (e) => {
    if (!dragging.has(i)) return;
    const v = clamp(startV + 2 * (startY - e.clientY) / TRAVEL_PX, -1, 1);
    if (v === dragging.get(i)) return;
    dragging.set(i, v);
    send({ type: "knob", knob: i, value: v });
    scheduleDraw();
  });
  const release = () => { dragging.delete(i); scheduleDraw(); };
  svg.addEventListener("pointerup", release);
  svg.addEventListener("pointercancel", release);
  el.querySelector("button").addEventListener("click", () => {
    send({ type: "learn", knob: state && state.learning === i ? null : i });
  });
  return el;
}

function drawKnob(i, value, pickedUp, cc, learning) {
  if (!changed(`knob${i}`, `${value} ${pickedUp} ${cc} ${learning}`)) return;
  const el = knobEls[i];
  const shown = clamp(value, -1, 1);
  const deg = shown * ARC;
  el.querySelector(".arc").setAttribute("d", Math.abs(deg) < 0.5 ? "" : arcPath(Math.min(0, deg), Math.max(0, deg), 38));
  const [x, y] = polar(deg, 38);
  const dot = el.querySelector(".dot");
  dot.setAttribute("cx", x);
  dot.setAttribute("cy", y);
  el.querySelector(".val").textContent = fmt(value);
  el.querySelector(".cc").textContent = cc >= 0 ? `CC ${cc}` : "no CC";
  el.dataset.value = value.toFixed(4);
  el.dataset.pickup = String(pickedUp);
  el.classList.toggle("waiting", !pickedUp);
  el.classList.toggle("learning", learning);
  el.querySelector("button").textContent = learning ? "move a control…" : "learn";
}

// ------------------------------------------------------------------ map
const map = document.getElementById("map");
const mapCtx = map.getContext("2d");
let dots = null;  // the training notes drawn once, off screen
let range = 1.25;  // half the width of the map, in knob coordinates

function toPx(x, y) {
  const s = map.width / (2 * range);
  return [map.width / 2 + x * s, map.height / 2 - y * s];
}

function fromPx(px, py) {
  const s = map.width / (2 * range);
  return [(px - map.width / 2) / s, (map.height / 2 - py) / s];
}

function prepareMap() {
  const m = info.map;
  const note = document.getElementById("mapnote");
  const spans = info.snapshots.filter((s) => s.x !== null).flatMap((s) => [Math.abs(s.x), Math.abs(s.y)]);
  if (m) {
    const all = m.x.map(Math.abs).concat(m.y.map(Math.abs)).sort((a, b) => a - b);
    spans.push(all[Math.floor(0.98 * (all.length - 1))]);
  }
  range = clamp(Math.max(1, ...spans) * 1.1, 1.1, 4);
  dots = document.createElement("canvas");
  dots.width = map.width;
  dots.height = map.height;
  const g = dots.getContext("2d");
  const [l, t] = toPx(-1, 1), [r, b] = toPx(1, -1);
  g.strokeStyle = "#3a3f4b";
  g.setLineDash([4, 4]);
  g.strokeRect(l, t, r - l, b - t);  // the knobs' travel
  g.setLineDash([]);
  if (!m) {
    note.textContent = "This preset ships no map of its training notes ([map] file): only the knobs' travel is shown.";
    return;
  }
  note.textContent = `${m.x.length} training notes, coloured by instrument family; drag the white point to move knobs 1 and 2.`;
  g.globalAlpha = 0.55;
  for (let k = 0; k < m.x.length; k++) {
    const [px, py] = toPx(m.x[k], m.y[k]);
    g.fillStyle = PALETTE[m.family[k] % PALETTE.length];
    g.fillRect(px - 1.5, py - 1.5, 3, 3);
  }
  const legend = document.getElementById("legend");
  m.families.forEach((name, f) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = PALETTE[f % PALETTE.length];  // a CSSOM property: allowed by the CSP
    item.append(swatch, name);
    legend.append(item);
  });
}

function mapPoint() {
  const x = dragging.has(0) ? dragging.get(0) : state.knobs[0];
  const y = dragging.has(1) ? dragging.get(1) : state.knobs[1];
  return [x, y];
}

function drawMap() {
  const point = state && state.knobs.length >= 2 ? mapPoint() : null;
  if (!changed("map", String(point))) return;
  mapCtx.clearRect(0, 0, map.width, map.height);
  if (dots) mapCtx.drawImage(dots, 0, 0);
  mapCtx.font = "11px system-ui, sans-serif";
  const labelled = info.snapshots.length <= MAX_MAP_LABELS;  // a GM preset's hundred names would hide the map
  for (const s of info.snapshots) {
    if (s.x === null) continue;
    const [px, py] = toPx(s.x, s.y);
    mapCtx.strokeStyle = labelled ? "#f2a541" : "rgba(242, 165, 65, 0.55)";
    mapCtx.strokeRect(px - 3, py - 3, 6, 6);
    if (labelled) {
      mapCtx.fillStyle = "#c8c8c8";
      mapCtx.fillText(s.name, px + 7, py + 4);
    }
  }
  if (!point) return;
  const [x, y] = point;
  const [px, py] = toPx(x, y);
  map.dataset.x = x.toFixed(4);
  map.dataset.y = y.toFixed(4);
  mapCtx.beginPath();
  mapCtx.arc(px, py, 7, 0, 2 * Math.PI);
  mapCtx.fillStyle = "#ffffff";
  mapCtx.fill();
  mapCtx.lineWidth = 2;
  mapCtx.strokeStyle = "#000";
  mapCtx.stroke();
}

function mapDrag(e) {
  const rect = map.getBoundingClientRect();
  const px = (e.clientX - rect.left) * map.width / rect.width;
  const py = (e.clientY - rect.top) * map.height / rect.height;
  const [x, y] = fromPx(px, py).map((v) => clamp(v, -1, 1));
  dragging.set(0, x);
  dragging.set(1, y);
  send({ type: "knob", knob: 0, value: x });
  send({ type: "knob", knob: 1, value: y });
  scheduleDraw();
}

map.addEventListener("pointerdown", (e) => {
  if (!info || info.knobs.length < 2) return;
  map.setPointerCapture(e.pointerId);
  map.dataset.held = "1";
  mapDrag(e);
});
map.addEventListener("pointermove", (e) => { if (map.dataset.held === "1") mapDrag(e); });
for (const ev of ["pointerup", "pointercancel"]) {
  map.addEventListener(ev, () => { map.dataset.held = ""; dragging.delete(0); dragging.delete(1); scheduleDraw(); });
}

// ------------------------------------------------------------------ state
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(draw);
}

function draw() {
  drawPending = false;
  if (!info || !state) return;
  const shown = state.knobs.map((v, i) => (dragging.has(i) ? dragging.get(i) : v));
  shown.forEach((v, i) => drawKnob(i, v, state.pickup[i], state.ccs[i], state.learning === i));
  const last = drawLog.length ? drawLog[drawLog.length - 1].knobs : null;
  if (!last || shown.some((v, i) => v !== last[i])) remember(drawLog, { t: wallMs(), knobs: shown });
  drawMap();
  drawTimbres();
  setText("voices", String(state.voices));
  setText("load", (100 * state.load).toFixed(1) + " %");
  setText("peak", (100 * state.load_peak).toFixed(1) + " %");
  setText("xruns", String(state.xruns));
  setText("midi", state.midi || "–");
  const extra = [];
  if (state.dropped) extra.push(`dropped ${state.dropped}`);
  if (state.ignored) extra.push(`refused controls ${state.ignored}`);
  setText("extra", extra.join(" · "));
  const learned = state.learned;
  let learnText = "";
  if (state.learning !== null) learnText = `MIDI learn: move a hardware control to bind knob ${state.learning + 1}.`;
  else if (learned && learned.error) learnText = `MIDI learn: CC ${learned.cc} → knob ${learned.knob + 1} not saved: ${learned.error}`;
  else if (learned) learnText = `MIDI learn: CC ${learned.cc} → knob ${learned.knob + 1}, saved to ${learned.saved}`;
  setText("learnmsg", learnText);
}

// ------------------------------------------------------------------ timbres: user snapshots, random, morph, capture
let userVersion = 0;
let morphHeld = false;

function timbreButton(label, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

function renderTimbres() {
  const mine = document.getElementById("usersnaps");
  mine.replaceChildren(...info.user.map((u) => {
    const b = timbreButton(u.name, `user program ${u.program}`, () => send({ type: "user", user: u.program }));
    b.dataset.user = String(u.program);
    return b;
  }));
  if (!info.user.length) mine.textContent = "none yet: capture a recording below";
  const names = info.user.map((u) => u.name).concat(info.snapshots.map((s) => s.name));
  ["morph-a", "morph-b"].forEach((id, k) => {
    const select = document.getElementById(id);
    const keep = select.value;
    select.replaceChildren(...names.map((n) => { const o = document.createElement("option"); o.value = o.textContent = n; return o; }));
    select.value = names.includes(keep) ? keep : names[Math.min(k, names.length - 1)] || "";
  });
}

function sendEndpoints() {
  const a = document.getElementById("morph-a").value, b = document.getElementById("morph-b").value;
  if (a && b) send({ type: "morph_endpoints", a, b });
}

async function reloadInfo() {
  const response = await fetch("/api/info" + Q, { cache: "no-store" });
  info = await response.json();
  renderTimbres();
}

async function upload(file) {
  const msg = document.getElementById("capturemsg");
  const field = document.getElementById("capturename");
  const name = field.value.trim() || file.name.replace(/\.[^.]*$/, "");
  msg.className = "hint";
  msg.textContent = `capturing ${file.name}…`;
  const url = `/api/capture${Q}&name=${encodeURIComponent(name)}&filename=${encodeURIComponent(file.name)}`;
  try {
    const response = await fetch(url, { method: "POST", body: file });
    const result = await response.json();
    if (!response.ok) throw new Error(result.error || response.statusText);
    msg.textContent = `captured “${result.name}” as user program ${result.program}: ${result.summary}`;
    field.value = "";  // the new user snapshot's button comes with the next state (user_version)
  } catch (err) {
    msg.className = "hint error";
    msg.textContent = `not captured: ${err.message}`;
  }
}

function setUpTimbres() {
  document.getElementById("random").addEventListener("click", () => send({ type: "random" }));
  const slider = document.getElementById("morph");
  slider.addEventListener("pointerdown", () => { morphHeld = true; if (!state || !state.morphing) sendEndpoints(); });
  slider.addEventListener("pointerup", () => { morphHeld = false; });
  slider.addEventListener("input", () => send({ type: "morph", value: slider.value / 1000 }));
  for (const id of ["morph-a", "morph-b"]) document.getElementById(id).addEventListener("change", sendEndpoints);
  const zone = document.getElementById("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  const input = document.getElementById("capturefile");
  input.addEventListener("change", () => { if (input.files.length) upload(input.files[0]); input.value = ""; });
}

function drawTimbres() {
  setText("timbre", state.timbre);
  if (!morphHeld) document.getElementById("morph").value = String(Math.round(state.morph * 1000));
  if (state.user_version !== userVersion) {
    userVersion = state.user_version;
    reloadInfo();
  }
}

function connect() {
  const conn = document.getElementById("conn");
  socket = new WebSocket(`ws://${location.host}/ws${Q}`);
  socket.onopen = () => { conn.textContent = "connected"; conn.className = "up"; };
  socket.onmessage = (e) => {
    const previous = state;
    state = JSON.parse(e.data);
    counts.messages++;
    if (!previous || state.knobs.some((v, i) => v !== previous.knobs[i])) remember(recvLog, { t: wallMs(), knobs: state.knobs });
    scheduleDraw();
  };
  socket.onclose = () => {
    conn.textContent = "disconnected: retrying…";
    conn.className = "down";
    setTimeout(connect, 1000);
  };
}

async function start() {
  const response = await fetch("/api/info" + Q, { cache: "no-store" });
  info = await response.json();
  document.getElementById("preset").textContent = info.preset;
  const knobs = document.getElementById("knobs");
  info.knobs.forEach((name, i) => { knobEls.push(makeKnob(i, name)); knobs.append(knobEls[i]); });
  const snaps = document.getElementById("snapshots");
  info.snapshots.forEach((s) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = s.name;
    b.dataset.program = String(s.program);
    b.title = `program ${s.program}`;
    b.addEventListener("click", () => send({ type: "program", program: s.program }));
    snaps.append(b);
  });
  if (!info.snapshots.length) snaps.textContent = "This preset has no snapshots.";
  renderTimbres();
  setUpTimbres();
  prepareMap();
  connect();
}

start();
