// mvbind's page: upload or pick a video, show the tracks that fit, play one under the video.
// No framework and no build step: the server ships this file as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { video: null, results: [], playing: null, maxUploadMb: 0 };

function fmtTime(s) {
  s = Math.max(0, Number(s) || 0);
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

function showMessage(text, kind = "error") {
  const el = $("message");
  el.textContent = text;
  el.className = kind === "info" ? "info" : "";
  el.hidden = !text;
}

function errorText(xhrOrResponse, body) {
  try {
    const data = typeof body === "string" ? JSON.parse(body) : body;
    if (data && data.error) return data.error;
  } catch (_) { /* not JSON */ }
  const status = xhrOrResponse.status;
  return status ? `the server answered ${status}` : "the server could not be reached; is `mvbind serve` running?";
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorText(response, body));
  return body;
}

// -- start: what the server serves ------------------------------------------------------------
async function init() {
  try {
    const health = await getJSON("/api/health");
    state.maxUploadMb = health.max_upload_mb;
    $("library").textContent = `library ${health.library.name}: ${health.library.tracks} tracks · ` +
      `${health.mode === "zero-shot" ? "zero-shot (no trained run)" : "run"} · ${health.encoder} encoder`;
    $("limit").textContent = `(up to ${health.max_upload_mb} MB)`;
    $("k").value = health.k;
    $("weight").value = health.steering.text_weight;
    $("weight-value").textContent = Number(health.steering.text_weight).toFixed(2);
    if (!health.steering.available) {
      $("steer").classList.add("off");
      for (const id of ["text", "weight", "search-text"]) $(id).disabled = true;
      $("steer-note").textContent = health.steering.why_not;
      $("steer-note").hidden = false;
    }
    const { videos } = await getJSON("/api/videos");
    const select = $("indexed");
    for (const v of videos) {
      const option = document.createElement("option");
      option.value = v.id;
      option.textContent = `${v.name} (${v.duration.toFixed(1)} s)`;
      select.appendChild(option);
    }
    select.disabled = videos.length === 0;
    if (videos.length) select.firstElementChild.textContent = `choose (${videos.length})`;
  } catch (err) {
    $("library").textContent = "";
    showMessage(err.message);
  }
}

// -- choosing a video -----------------------------------------------------------------------
function k() { return Math.max(1, Math.min(50, parseInt($("k").value, 10) || 5)); }

// the query string for a request: k, and the steering text and weight when the text box has words
function params(extra = {}) {
  const p = new URLSearchParams({ k: k(), ...extra });
  const text = $("text").value.trim();
  if (text && !$("text").disabled) {
    p.set("text", text);
    p.set("text_weight", $("weight").value);
  }
  return p.toString();
}

function setProgress(percent, text) {
  $("progress").hidden = percent === null;
  if (percent !== null) {
    $("progress-bar").value = percent;
    $("progress-text").textContent = text;
  }
}

function upload(file) {
  showMessage("");
  if (!file) return;
  if (state.maxUploadMb && file.size > state.maxUploadMb * 1024 * 1024) {
    showMessage(`${file.name} is ${(file.size / 1048576).toFixed(0)} MB; the limit is ${state.maxUploadMb} MB`);
    return;
  }
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/recommend?${params({ name: file.name })}`);
  xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setProgress(100 * e.loaded / e.total, `uploading ${Math.round(100 * e.loaded / e.total)} %`);
  };
  xhr.upload.onload = () => setProgress(100, "finding tracks that fit…");
  xhr.onerror = () => { setProgress(null); showMessage(errorText(xhr, null)); };
  xhr.onload = () => {
    setProgress(null);
    if (xhr.status !== 200) { showMessage(errorText(xhr, xhr.responseText)); return; }
    show(JSON.parse(xhr.responseText), URL.createObjectURL(file));
  };
  setProgress(0, "uploading 0 %");
  xhr.send(file);
}

async function recommendIndexed(id) {
  showMessage("");
  if (!id) return;
  setProgress(100, "finding tracks that fit…");
  try {
    const response = await fetch(`/api/videos/${encodeURIComponent(id)}/recommend?${params()}`, { method: "POST" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(errorText(response, body));
    show(body, body.video.url);
  } catch (err) {
    showMessage(err.message);
  } finally {
    setProgress(null);
  }
}

async function searchText() {
  showMessage("");
  const text = $("text").value.trim();
  if (!text) { showMessage("type a few words to search by, e.g. calm piano"); return; }
  setProgress(100, "searching by text…");
  try {
    show(await getJSON(`/api/search?${new URLSearchParams({ text, k: k() })}`), null);
  } catch (err) {
    showMessage(err.message);
  } finally {
    setProgress(null);
  }
}

// -- results ---------------------------------------------------------------------------------
function curveSvg(curve, best) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "curve");
  svg.setAttribute("viewBox", "0 0 300 40");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  if (!curve || curve.length === 0) return svg;
  const xs = curve.map((p) => p[0]);
  const ys = curve.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1;
  const y0 = Math.min(...ys), y1 = Math.max(...ys);
  const X = (x) => (x1 > x0 ? 4 + 292 * (x - x0) / (x1 - x0) : 150);
  const Y = (y) => (y1 > y0 ? 36 - 32 * (y - y0) / (y1 - y0) : 20);
  const points = curve.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`);
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("class", "area");
  area.setAttribute("points", `${X(x0)},38 ${points.join(" ")} ${X(x1)},38`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", points.join(" "));
  const bx = X(best.start);
  const marker = document.createElementNS(ns, "line");
  marker.setAttribute("class", "best-line");
  for (const [a, v] of [["x1", bx], ["x2", bx], ["y1", 2], ["y2", 38]]) marker.setAttribute(a, v);
  const dot = document.createElementNS(ns, "circle");
  dot.setAttribute("class", "best");
  dot.setAttribute("cx", bx);
  dot.setAttribute("cy", Y(best.score));
  dot.setAttribute("r", 3);
  const title = document.createElementNS(ns, "title");
  title.textContent = `score along the track (${curve.length} windows); best at ${fmtTime(best.start)}`;
  svg.append(title, area, line, marker, dot);
  return svg;
}

// where playback starts: the beat-aligned start (the video's cuts on the track's beats) when the server
// found one, else the best window's start
function playStart(r) { return r.alignment !== undefined && r.alignment !== null ? r.aligned_start : r.start; }

function previewUrl(r) {
  if (!state.video) return null;
  const mix = Number($("original").value);
  return `/api/videos/${encodeURIComponent(state.video.id)}/preview?track=${r.id}&start=${playStart(r)}&mix=${mix}`;
}

function show(data, videoUrl) {
  stopAudio();
  state.video = data.video;
  state.results = data.results;
  const video = $("video");
  $("video-note").hidden = true;
  if (videoUrl) {
    video.hidden = false;
    video.src = videoUrl;
  } else {
    video.removeAttribute("src");
    video.load();
    video.hidden = true;
  }
  video.muted = Number($("original").value) === 0;
  $("result").hidden = false;
  const steering = data.steering;
  $("result-title").textContent = data.video
    ? `${data.results.length} tracks for ${data.video.name}`
    : `${data.results.length} tracks for “${steering.text}”`;
  let how = data.mode === "zero-shot" ? "zero-shot (no trained run)" : "through the trained run";
  if (steering && steering.kind === "steered") how += ` · steered by “${steering.text}” (weight ${steering.weight})`;
  if (steering && steering.kind !== "steered") how = "text only, zero-shot (ImageBind text → music)";
  $("result-meta").textContent = `${how} · ${data.search} search · answered in ${data.seconds.total.toFixed(2)} s` +
    (data.notes.length ? ` · ${data.notes.join("; ")}` : "");
  const cards = $("cards");
  cards.replaceChildren();
  data.results.forEach((r, i) => {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.track = r.id;
    li.dataset.start = playStart(r);
    li.dataset.windowStart = r.start;
    const rank = document.createElement("div");
    rank.className = "rank";
    rank.textContent = r.rank;
    const who = document.createElement("div");
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = r.title || r.track;
    const artist = document.createElement("div");
    artist.className = "artist";
    artist.textContent = r.artist || (r.title ? r.track : "");
    who.append(title, artist);
    const numbers = document.createElement("div");
    numbers.className = "numbers";
    numbers.innerHTML = "score <b></b><br>start <b></b>";
    numbers.children[0].textContent = r.score.toFixed(3);
    numbers.children[2].textContent = fmtTime(r.start);
    if (playStart(r) !== r.start) {
      const beat = document.createElement("span");
      beat.className = "beat";
      beat.title = `the start nearest the best window that puts the video's cuts on the track's beats ` +
        `(${Math.round(100 * r.alignment)} % of cuts on a beat); playback starts here`;
      beat.innerHTML = "<br>on the beat <b></b>";
      beat.querySelector("b").textContent = `${Math.floor(r.aligned_start / 60)}:${(r.aligned_start % 60).toFixed(2).padStart(5, "0")}`;
      numbers.appendChild(beat);
    }
    if (r.text_score !== undefined) {
      numbers.title = r.video_score !== undefined
        ? `video ${r.video_score.toFixed(3)} · text ${r.text_score.toFixed(3)} (cosines; the score mixes them standardised)`
        : `text–music cosine ${r.text_score.toFixed(3)}`;
    }
    const actions = document.createElement("div");
    actions.className = "actions";
    const play = document.createElement("button");
    play.className = "play";
    play.type = "button";
    play.textContent = "▶ play under video";
    play.addEventListener("click", () => playTrack(i));
    const download = document.createElement("a");
    download.className = "button download";
    download.textContent = "download";
    download.title = "the video with this track under it, from the suggested start (made by the server)";
    download.href = previewUrl(r);
    download.addEventListener("click", () => { download.href = previewUrl(r); });
    if (state.video) actions.append(play, download); else actions.append(play);
    li.append(rank, who, numbers, curveSvg(r.curve, r), actions);
    cards.appendChild(li);
  });
  $("now-playing").textContent = "Pick a track to play it under the video.";
}

// -- playing a track under the video -------------------------------------------------------
// The <audio> follows the <video>: audio time = the track's suggested start + video time.
function audioTarget() { return state.playing.start + $("video").currentTime; }

function stopAudio() {
  const audio = $("audio");
  audio.pause();
  state.playing = null;
  for (const card of document.querySelectorAll(".card.playing")) card.classList.remove("playing");
}

function whenReady(media) {
  return new Promise((resolve, reject) => {
    if (media.readyState >= 1) { resolve(); return; }
    media.addEventListener("loadedmetadata", () => resolve(), { once: true });
    media.addEventListener("error", () => reject(new Error("the track could not be loaded")), { once: true });
  });
}

async function playTrack(i) {
  const r = state.results[i];
  const audio = $("audio");
  const video = $("video");
  stopAudio();
  const start = playStart(r);
  state.playing = { index: i, start, id: r.id };
  document.querySelectorAll(".card")[i].classList.add("playing");
  $("now-playing").textContent = `▶ ${r.title || r.track} from ${fmtTime(start)}`;
  if (audio.dataset.track !== String(r.id)) {
    audio.src = r.audio_url;
    audio.dataset.track = r.id;
  }
  try {
    await whenReady(audio);
    if (!state.playing || state.playing.index !== i) return; // another track was picked meanwhile
    const withVideo = !!state.video && !video.error;
    if (withVideo) video.currentTime = 0;
    audio.currentTime = start;
    audio.dataset.startedAt = start;
    const plays = [audio.play()];
    if (withVideo) plays.push(video.play());
    await Promise.all(plays);
  } catch (err) {
    showMessage(`could not play ${r.title || r.track}: ${err.message}`);
  }
}

function follow() {
  if (!state.playing || !state.video) return;
  const audio = $("audio");
  const target = audioTarget();
  if (Math.abs(audio.currentTime - target) > 0.25) audio.currentTime = target;
}

function wirePlayer() {
  const video = $("video");
  const audio = $("audio");
  video.addEventListener("play", () => { if (state.playing) { follow(); audio.play().catch(() => {}); } });
  video.addEventListener("pause", () => audio.pause());
  video.addEventListener("seeked", follow);
  video.addEventListener("timeupdate", follow);
  video.addEventListener("ended", () => audio.pause());
  video.addEventListener("error", () => {
    if (!state.video) return; // a text-only result has no video
    const note = $("video-note");
    note.textContent = "This browser can't play the video's format; the tracks still play on their own.";
    note.hidden = false;
  });
  const slider = $("original");
  slider.addEventListener("input", () => {
    const v = Number(slider.value);
    video.volume = v;
    video.muted = v === 0;
    $("original-value").textContent = v === 0 ? "muted" : `${Math.round(100 * v)} %`;
  });
}

function wireInput() {
  const drop = $("drop");
  const file = $("file");
  file.addEventListener("change", () => upload(file.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => upload(e.dataTransfer.files[0]));
  $("indexed").addEventListener("change", (e) => recommendIndexed(e.target.value));
  $("search-text").addEventListener("click", searchText);
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter") searchText(); });
  $("weight").addEventListener("input", () => { $("weight-value").textContent = Number($("weight").value).toFixed(2); });
}

wirePlayer();
wireInput();
init();
