// The page of `fer serve`: a photo or the camera's frames go to POST /v1/predict; the faces
// come back as {"path", "faces": [{"box": [x, y, w, h], "label", "probs"}], "error"} and are
// drawn as boxes over the picture, with a probability bar per class for each face.
// Plain browser JavaScript, no library and nothing loaded from elsewhere (works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { classes: [], camera: null, live: false };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// ------------------------------------------------------------------ the API key

// A server started with API keys answers 401 until a request carries one. The page then asks
// for it once (the form under the title), keeps it in sessionStorage (this tab only, gone when
// it closes) and sends it as "Authorization: Bearer <key>" on every request to the server.
const KEY_STORE = "fer-api-key";
let keyAsked = null; // the one open question, shared by every request that got a 401

const storedKey = () => sessionStorage.getItem(KEY_STORE) || "";

function askKey(message) {
  if (!keyAsked) {
    keyAsked = new Promise((resolve) => {
      const form = $("key-form");
      $("key-message").textContent = message;
      form.hidden = false;
      $("key-input").focus();
      form.onsubmit = (e) => {
        e.preventDefault();
        const key = $("key-input").value.trim();
        if (!key) return;
        sessionStorage.setItem(KEY_STORE, key);
        $("key-input").value = "";
        form.hidden = true;
        keyAsked = null;
        resolve();
      };
    });
  }
  return keyAsked;
}

// fetch() with the key; after a 401 it asks for a key (again, if the stored one was refused)
// and retries, at most three times.
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = storedKey();
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    const res = await fetch(path, { ...options, headers });
    if (res.status !== 401 || attempt === 3) return res;
    if (storedKey() && storedKey() !== key) continue; // a new key came meanwhile: use it
    sessionStorage.removeItem(KEY_STORE);
    await askKey(key ? "The server refused that API key; enter another." : "This server needs an API key.");
  }
}

async function postImage(blob) {
  const res = await api("/v1/predict", {
    method: "POST",
    headers: { "Content-Type": blob.type || "application/octet-stream" },
    body: blob,
  });
  let body;
  try {
    body = await res.json();
  } catch (e) {
    throw new Error(`the server answered ${res.status} without JSON`);
  }
  if (!res.ok) throw new Error(body.error || `the server answered ${res.status}`);
  return body;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;

// Boxes are placed in percent of the picture's own size, so they follow it when it scales.
function drawBoxes(faces, width, height) {
  const overlay = $("overlay");
  overlay.replaceChildren();
  faces.forEach((face, i) => {
    const [x, y, w, h] = face.box;
    const box = document.createElement("div");
    box.className = "face-box";
    box.style.left = `${(100 * x) / width}%`;
    box.style.top = `${(100 * y) / height}%`;
    box.style.width = `${(100 * w) / width}%`;
    box.style.height = `${(100 * h) / height}%`;
    if (y < 0.06 * height) box.classList.add("below");
    const label = document.createElement("span");
    label.className = "face-label";
    label.textContent = `${i + 1}: ${face.label} ${pct(face.probs[face.label])}`;
    box.appendChild(label);
    overlay.appendChild(box);
  });
}

function listFaces(faces) {
  const list = $("faces");
  list.replaceChildren();
  faces.forEach((face, i) => {
    const li = document.createElement("li");
    li.className = "face";
    const h = document.createElement("h2");
    h.textContent = `Face ${i + 1}: ${face.label}`;
    li.appendChild(h);
    const classes = state.classes.length ? state.classes : Object.keys(face.probs);
    for (const c of classes) {
      const row = document.createElement("div");
      row.className = "prob" + (c === face.label ? " top" : "");
      const name = document.createElement("span");
      name.textContent = c;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = pct(face.probs[c]);
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "pct";
      value.textContent = pct(face.probs[c]);
      row.append(name, bar, value);
      li.appendChild(row);
    }
    list.appendChild(li);
  });
}

function showResult(result, width, height) {
  drawBoxes(result.faces, width, height);
  listFaces(result.faces);
}

// ------------------------------------------------------------------ a photo

async function analysePhoto(file) {
  stopCamera();
  const img = $("photo");
  $("stage").hidden = false;
  img.hidden = false;
  $("overlay").replaceChildren();
  $("faces").replaceChildren();
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(file);
  const loaded = new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve; // a format the browser cannot show: the server still answers
  });
  img.src = img.dataset.url;
  setStatus(`analysing ${file.name}…`);
  try {
    const t0 = performance.now();
    const [result] = await Promise.all([postImage(file), loaded]);
    const ms = Math.round(performance.now() - t0);
    showResult(result, img.naturalWidth || 1, img.naturalHeight || 1);
    const n = result.faces.length;
    setStatus(n ? `${file.name}: ${n} face${n > 1 ? "s" : ""} (${ms} ms)` : `${file.name}: no face found (${ms} ms)`);
  } catch (e) {
    setStatus(`${file.name}: ${e.message}`, true);
  }
}

function setupPhoto() {
  const input = $("file");
  const drop = $("drop");
  input.addEventListener("change", () => {
    if (input.files.length) analysePhoto(input.files[0]);
    input.value = "";
  });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => {
    const file = e.dataTransfer.files[0];
    if (file) analysePhoto(file);
  });
  // Dropping a file anywhere else would make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// ------------------------------------------------------------------ the camera

// Frames are scaled to at most this width before JPEG encoding: the detector works at
// <= 640 px anyway, and a smaller upload and decode keep the loop fast.
const FRAME_WIDTH = 480;
// Two requests in flight: while the server detects one frame the next is being encoded
// and sent, so the loop is not idle during the round trip.
const IN_FLIGHT = 2;

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("this browser gives no camera access here (it needs https or localhost)", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
  } catch (e) {
    setStatus(`no camera: ${e.message || e.name}`, true);
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  $("photo").hidden = true;
  video.hidden = false;
  $("stage").hidden = false;
  $("faces").replaceChildren();
  $("camera-btn").setAttribute("aria-pressed", "true");
  $("camera-btn").textContent = "Stop camera";
  const canvas = document.createElement("canvas");
  const scale = Math.min(1, FRAME_WIDTH / video.videoWidth);
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  state.camera = { stream, canvas, sent: 0, shown: 0, done: [] };
  state.live = true;
  setStatus("camera: live labels");
  for (let i = 0; i < IN_FLIGHT; i++) cameraLoop(state.camera);
}

function stopCamera() {
  const cam = state.camera;
  state.live = false;
  state.camera = null;
  if (cam) cam.stream.getTracks().forEach((t) => t.stop());
  $("video").hidden = true;
  $("camera-btn").setAttribute("aria-pressed", "false");
  $("camera-btn").textContent = "Camera";
  $("live-label").textContent = "";
  $("fps").textContent = "";
}

async function cameraLoop(cam) {
  const ctx = cam.canvas.getContext("2d");
  while (state.live && state.camera === cam) {
    ctx.drawImage($("video"), 0, 0, cam.canvas.width, cam.canvas.height);
    const blob = await new Promise((r) => cam.canvas.toBlob(r, "image/jpeg", 0.8));
    const seq = ++cam.sent;
    let result;
    try {
      result = await postImage(blob);
    } catch (e) {
      setStatus(`camera: ${e.message}`, true);
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    if (state.camera !== cam || seq < cam.shown) continue; // stopped, or an older frame
    cam.shown = seq;
    const now = performance.now();
    cam.done.push(now);
    while (cam.done.length && now - cam.done[0] > 2000) cam.done.shift();
    showResult(result, cam.canvas.width, cam.canvas.height);
    const top = result.faces[0];
    $("live-label").textContent = top ? `${top.label} ${pct(top.probs[top.label])}` : "no face";
    $("fps").textContent = `${(cam.done.length / 2).toFixed(1)} frames/s`;
    $("fps").dataset.fps = String(cam.done.length / 2);
  }
}

function setupCamera() {
  $("camera-btn").addEventListener("click", () => (state.live ? stopCamera() : startCamera()));
}

// ------------------------------------------------------------------ the model line

async function describeModel() {
  try {
    const res = await api("/v1/model");
    const m = await res.json();
    state.classes = m.classes || [];
    const name = m.description || m.name || "model";
    const runner = m.runner ? ` (${m.runner.backend}${m.runner.precision ? " " + m.runner.precision : ""}, detector ${m.runner.detector})` : "";
    $("model").textContent = `${name}${runner}; classes: ${state.classes.join(", ")}`;
  } catch (e) {
    $("model").textContent = "the model description is unavailable";
  }
}

setupPhoto();
setupCamera();
describeModel();
