// vidcache report page: everything drawn from the JSON in #vc-data; no network, no libraries.
"use strict";
const DATA = JSON.parse(document.getElementById("vc-data").textContent);
const VIDEOS = DATA.videos.map((v, i) => Object.assign(v, { index: i }));
const PAIRED = VIDEOS.some(v => v.ref);
const STATUSES = ["done", "skipped", "failed", "missing"];
const COLOURS = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0b7285", "#c2255c", "#5c940d"];
const CACHES = [...new Set(VIDEOS.map(v => v.cache))].sort();
const state = { status: "", cache: "", q: "", sort: "index", desc: false, per: 48, page: 0, shown: [] };

// -- small helpers ------------------------------------------------------------------------------
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}
const num = x => typeof x === "number" && isFinite(x);
const fmt = (x, d = 2, unit = "") => num(x) ? x.toFixed(d) + unit : "–";
function secs(x) { return !num(x) ? "–" : x < 1 ? (x * 1000).toFixed(0) + " ms" : x < 100 ? x.toFixed(2) + " s" : x.toFixed(0) + " s"; }
function bytes(x) { return !num(x) ? "–" : x >= 2 ** 30 ? (x / 2 ** 30).toFixed(2) + " GiB" : (x / 2 ** 20).toFixed(0) + " MiB"; }
const db = x => num(x) ? (x >= 99.99 ? "identical" : x.toFixed(2) + " dB") : "–";
const times = x => num(x) ? x.toFixed(2) + "×" : "–";
const cacheColour = c => COLOURS[CACHES.indexOf(c) % COLOURS.length];
function quiet(p) { if (p && p.catch) p.catch(() => {}); }  // play() rejects when a pause interrupts it

// -- header, problems, summary ------------------------------------------------------------------
function header() {
  const c = DATA.counts;
  const badges = STATUSES.filter(s => c[s]).map(s => el("span", { class: "badge " + s, text: `${c[s]} ${s}` }));
  document.getElementById("top").append(
    el("h1", { text: PAIRED ? "vidcache report: compared against a reference" : "vidcache report" }),
    el("div", { class: "sub", text: `${DATA.folder}${DATA.against ? "  against  " + DATA.against : ""} · ` +
      `${VIDEOS.length} videos · built ${DATA.built} by vidcache ${DATA.vidcache}` }),
    el("div", { class: "badges" }, badges));
}

function problems() {
  if (!DATA.problems.length) return;
  const box = document.getElementById("problems");
  box.hidden = false;
  box.append(el("details", { open: DATA.problems.length <= 12 },
    el("summary", { text: `${DATA.problems.length} problem${DATA.problems.length > 1 ? "s" : ""} while reading` }),
    el("ul", {}, DATA.problems.map(p => el("li", { text: p })))));
}

function table(cols, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, cols.map(c => el("th", { text: c[0] })))),
    el("tbody", {}, rows.map(r => el("tr", {}, cols.map(c => el("td", { text: c[1](r) }))))));
}

function summary() {
  if (!VIDEOS.length) return;
  const box = document.getElementById("summary");
  box.hidden = false;
  const cols = [["cache", r => r.cache], ["videos", r => r.videos], ["failed", r => r.failed || "–"],
    ["missing", r => r.missing || "–"], ["mean time", r => secs(r.mean_total_s)],
    ["mean denoise", r => secs(r.mean_denoise_s)], ["compute", r => fmt(r.compute_ratio, 3)],
    ["peak memory", r => bytes(r.peak_bytes)]];
  if (PAIRED) cols.push(["pairs", r => r.pairs || "–"], ["speedup", r => times(r.speedup)],
    ["denoise", r => times(r.speedup_denoise)], ["PSNR", r => db(r.psnr)],
    ["worst frame", r => db(r.psnr_worst)], ["SSIM", r => fmt(r.ssim, 4)], ["worst", r => fmt(r.ssim_worst, 4)]);
  const some = key => DATA.caches.some(r => r[key]);
  const shown = cols.filter(c => !["failed", "missing"].includes(c[0]) || some(c[0]))
    .filter(c => !PAIRED || c[0] !== "mean denoise");  // beside a reference: its speedup says it
  const row = el("div", { class: "summary-row" }, el("div", { class: "scroll" }, table(shown, DATA.caches)));
  if (PAIRED) row.append(scatter());
  box.append(el("h2", { text: PAIRED ? "Speed against quality, per cache" : "Per cache" }), row);
  if (PAIRED) box.append(el("div", { class: "legend", text: "speedup: the reference video's time over this video's, " +
    "whole video and denoising alone (median per cache); PSNR / SSIM against the reference video of the same job, " +
    "mean over frames and the worst frame." }));
}

function scatter() {
  const pts = VIDEOS.filter(v => num(v.speedup) && num(v.psnr));
  const W = 360, H = 220, L = 44, B = 30;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "scatter" });
  if (!pts.length) return g;
  const xs = pts.map(p => p.speedup), ys = pts.map(p => Math.min(p.psnr, 60));
  const x0 = Math.min(1, ...xs) * 0.95, x1 = Math.max(...xs) * 1.05, y0 = Math.min(...ys) - 1, y1 = Math.max(...ys) + 1;
  const X = x => L + (x - x0) / (x1 - x0 || 1) * (W - L - 8), Y = y => H - B - (y - y0) / (y1 - y0 || 1) * (H - B - 8);
  g.append(svg("line", { x1: L, y1: H - B, x2: W - 4, y2: H - B, stroke: "#98a2b3" }),
    svg("line", { x1: L, y1: 4, x2: L, y2: H - B, stroke: "#98a2b3" }),
    svg("text", { x: (W + L) / 2, y: H - 6, "text-anchor": "middle" }, "speedup (×)"),
    svg("text", { x: 10, y: (H - B) / 2, transform: `rotate(-90 10 ${(H - B) / 2})`, "text-anchor": "middle" }, "PSNR (dB)"),
    svg("text", { x: L, y: H - B + 13, "text-anchor": "middle" }, x0.toFixed(2)),
    svg("text", { x: W - 8, y: H - B + 13, "text-anchor": "end" }, x1.toFixed(2)),
    svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, y0.toFixed(1)),
    svg("text", { x: L - 4, y: 12, "text-anchor": "end" }, y1.toFixed(1)));
  for (const p of pts) {
    const dot = svg("circle", { cx: X(p.speedup), cy: Y(Math.min(p.psnr, 60)), r: 4, fill: cacheColour(p.cache),
      "fill-opacity": 0.75, style: "cursor:pointer" }, svg("title", {}, `${p.name} (${p.cache}): ${times(p.speedup)}, ${db(p.psnr)}`));
    dot.addEventListener("click", () => openDetail(p.index));
    g.append(dot);
  }
  return el("div", {}, g, el("div", { class: "legend" }, CACHES.map(c => el("span", {},
    el("i", { style: `background:${cacheColour(c)}` }), c))));
}

function bench() {
  if (!DATA.bench.length) return;
  const box = document.getElementById("bench");
  box.hidden = false;
  for (const b of DATA.bench) {
    const keys = [...new Set(b.rows.flatMap(r => Object.keys(r)))].filter(k => k !== "params");
    const cell = (r, k) => typeof r[k] === "number" ? (Number.isInteger(r[k]) ? String(r[k]) : r[k].toFixed(3)) : (r[k] ?? "–");
    box.append(el("h2", { text: "Bench: " + decodeURIComponent(b.file) }),
      el("div", { class: "summary-row" }, el("div", { class: "scroll" }, table(keys.map(k => [k, r => cell(r, k)]), b.rows)),
        b.png ? el("img", { src: b.png, alt: "speed against quality", style: "max-width:420px;width:100%" }) : null));
  }
}

function unpaired() {
  const u = DATA.unpaired;
  if (!u || (!u.here.length && !u.against.length)) return;
  const box = document.getElementById("unpaired");
  box.hidden = false;
  const list = (title, xs) => el("div", {}, el("h2", { text: `${title} (${xs.length})` }),
    xs.length ? el("ul", {}, xs.map(x => el("li", { text: (x.dir && x.dir !== "." ? x.dir + "/" : "") + x.name })))
      : el("div", { class: "muted", text: "none" }));
  box.append(el("div", { class: "cols" }, list("Only in " + DATA.folder, u.here), list("Only in " + DATA.against, u.against)));
}

// -- the contact sheet ------------------------------------------------------------------------------
const SORTS = { index: ["batch order", v => v.index], name: ["name", v => v.name], status: ["status", v => STATUSES.indexOf(v.status)],
  total_s: ["time", v => v.total_s], denoise_s: ["denoise time", v => v.denoise_s], compute_ratio: ["compute ratio", v => v.compute_ratio],
  peak_bytes: ["peak memory", v => v.peak_bytes] };
if (PAIRED) Object.assign(SORTS, { psnr: ["PSNR", v => v.psnr], psnr_min: ["worst-frame PSNR", v => v.psnr_min],
  ssim: ["SSIM", v => v.ssim], speedup: ["speedup", v => v.speedup] });

function controls() {
  if (!VIDEOS.length) return;
  const nav = document.getElementById("controls");
  nav.hidden = false;
  const opt = (value, text) => el("option", { value, text });
  const change = (key, parse = x => x) => e => { state[key] = parse(e.target.value); state.page = 0; draw(); };
  nav.append(
    el("label", {}, "status", el("select", { id: "f-status", onchange: change("status") }, opt("", "all"),
      STATUSES.filter(s => DATA.counts[s]).map(s => opt(s, `${s} (${DATA.counts[s]})`)))),
    el("label", {}, "cache", el("select", { id: "f-cache", onchange: change("cache") }, opt("", "all"), CACHES.map(c => opt(c, c)))),
    el("label", {}, "search", el("input", { id: "f-q", type: "search", placeholder: "prompt or name", oninput: change("q", x => x.toLowerCase()) })),
    el("label", {}, "sort", el("select", { id: "f-sort", onchange: change("sort") }, Object.entries(SORTS).map(([k, s]) => opt(k, s[0])))),
    el("button", { id: "f-desc", text: "↑ ascending", onclick: e => { state.desc = !state.desc;
      e.target.textContent = state.desc ? "↓ descending" : "↑ ascending"; draw(); } }),
    el("label", {}, "per page", el("select", { id: "f-per", onchange: change("per", Number) }, [24, 48, 96, 192, 480].map(n => {
      const o = opt(n, n); if (n === state.per) o.selected = true; return o; }))),
    el("span", { id: "f-count", class: "muted" }));
}

function filtered() {
  const key = SORTS[state.sort][1];
  const out = VIDEOS.filter(v => (!state.status || v.status === state.status) && (!state.cache || v.cache === state.cache) &&
    (!state.q || (v.name + " " + (v.prompt || "")).toLowerCase().includes(state.q)));
  out.sort((a, b) => {
    const x = key(a), y = key(b);
    const missing = (x === null || x === undefined) - (y === null || y === undefined);
    if (missing) return missing;  // videos without the number go last either way
    const c = typeof x === "string" ? x.localeCompare(y) : x - y;
    return (state.desc ? -c : c) || a.index - b.index;
  });
  return out;
}

function thumb(v) {
  const box = el("div", { class: "thumb" });
  const pic = (src, alt) => src ? el("img", { src, alt, loading: "lazy", decoding: "async" }) : el("span", { text: alt });
  if (v.ref && (v.poster || v.ref.poster)) box.append(el("div", { class: "pair" }, pic(v.ref.poster, "no reference"), pic(v.poster, "—")));
  else if (v.poster) box.append(pic(v.poster, v.name));
  else box.append(el("span", { text: v.status === "failed" ? "failed" : v.status === "missing" ? "MP4 missing" : "no picture" }));
  if (v.mp4 && !v.ref) {  // hover plays the clip in place
    box.addEventListener("mouseenter", () => {
      if (box.querySelector("video")) return;
      const vid = el("video", { src: v.mp4, muted: true, loop: true, playsinline: true, poster: v.poster });
      vid.muted = true;
      box.replaceChildren(vid);
      quiet(vid.play());
    });
    box.addEventListener("mouseleave", () => { box.replaceChildren(pic(v.poster, v.name)); });
  }
  return box;
}

function card(v) {
  const nums = [el("span", { text: secs(v.total_s) })];
  if (num(v.compute_ratio) && v.compute_ratio < 1) nums.push(el("span", { text: `compute ${v.compute_ratio.toFixed(2)}` }));
  if (num(v.speedup)) nums.push(el("span", { text: times(v.speedup) }));
  if (num(v.psnr)) nums.push(el("span", { text: db(v.psnr) }));
  return el("div", { class: "card", "data-index": v.index, "data-status": v.status, onclick: () => openDetail(v.index) },
    thumb(v),
    el("div", { class: "body" },
      el("div", { class: "name", title: v.name, text: v.name }),
      el("div", { class: "prompt", title: v.prompt || "", text: v.prompt || "" }),
      el("div", { class: "nums" }, el("span", { class: "badge " + v.status, text: v.status }),
        el("span", { class: "badge cache", text: v.cache }), nums),
      v.error ? el("div", { class: "error", title: v.error, text: v.error }) : null));
}

function draw() {
  state.shown = filtered();
  const pages = Math.max(1, Math.ceil(state.shown.length / state.per));
  state.page = Math.min(state.page, pages - 1);
  const start = state.page * state.per;
  document.getElementById("grid").replaceChildren(...state.shown.slice(start, start + state.per).map(card));
  const count = document.getElementById("f-count");
  if (count) count.textContent = `${state.shown.length} of ${VIDEOS.length} videos`;
  const go = p => () => { state.page = p; draw(); window.scrollTo(0, document.getElementById("controls").offsetTop); };
  document.getElementById("pager").replaceChildren(...(pages > 1 ? [
    el("button", { id: "p-prev", text: "‹ previous", disabled: state.page === 0, onclick: go(state.page - 1) }),
    el("span", { id: "p-at", text: `page ${state.page + 1} of ${pages}` }),
    el("button", { id: "p-next", text: "next ›", disabled: state.page >= pages - 1, onclick: go(state.page + 1) })] : []));
}

// -- one video: the players in step, the strips and plots ------------------------------------------
class Player {
  // Plays several <video>s of one job in step: the first leads, the others follow within half a frame.
  constructor(videos, fps, frames, onFrame) {
    Object.assign(this, { videos, fps: fps || 16, frames: frames || 1, onFrame, raf: 0, loop: true });
    this.lead = videos[0];
    this.lead.addEventListener("ended", () => { if (this.loop) { this.seek(0); this.play(); } else this.pause(); });
    for (const v of videos) v.addEventListener("timeupdate", () => this.tick(false));
  }
  get playing() { return !this.lead.paused; }
  frame() { return Math.min(this.frames - 1, Math.floor(this.lead.currentTime * this.fps + 1e-3)); }
  play() {
    for (const v of this.videos) quiet(v.play());
    const loop = () => { this.tick(true); if (this.playing) this.raf = requestAnimationFrame(loop); };
    cancelAnimationFrame(this.raf);
    this.raf = requestAnimationFrame(loop);
  }
  pause() {
    const was = this.playing, f = this.frame();
    for (const v of this.videos) v.pause();
    cancelAnimationFrame(this.raf);
    if (was) this.seek(f);  // all on the frame the leader showed
  }
  seek(frame) {
    const f = Math.max(0, Math.min(this.frames - 1, frame));
    const t = (f + 0.5) / this.fps;  // the middle of the frame: no rounding onto its neighbour
    for (const v of this.videos) v.currentTime = t;
    this.onFrame(f);
  }
  rate(r) { for (const v of this.videos) v.playbackRate = r; }
  tick(align) {
    if (align) for (const v of this.videos.slice(1))
      if (Math.abs(v.currentTime - this.lead.currentTime) > 0.5 / this.fps) v.currentTime = this.lead.currentTime;
    this.onFrame(this.frame());
  }
  stop() { cancelAnimationFrame(this.raf); for (const v of this.videos) { v.pause(); v.removeAttribute("src"); v.load(); } }
}

let player = null;
let current = -1;

function linePlot(series, opts) {
  // series: [{values, colour, label}]; x = index; opts: {min, max, unit, bars, onPick, cursor}
  const W = 520, H = 110, L = 52, B = 16;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  const all = series.flatMap(s => s.values).filter(num);
  if (!all.length) return el("div", { class: "muted", text: "no data" });
  const n = Math.max(...series.map(s => s.values.length));
  const lo = opts.min ?? Math.min(...all), hi = opts.max ?? Math.max(...all);
  const X = i => L + (n > 1 ? i / (n - 1) : 0.5) * (W - L - 6), Y = y => H - B - (y - lo) / (hi - lo || 1) * (H - B - 6);
  g.append(svg("text", { x: L - 4, y: 10, "text-anchor": "end" }, opts.label(hi)),
    svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, opts.label(lo)),
    svg("text", { x: W - 6, y: H - 3, "text-anchor": "end" }, opts.xlabel || ""),
    svg("line", { x1: L, y1: H - B, x2: W - 6, y2: H - B, stroke: "#c0c6d0" }));
  for (const s of series) {
    if (opts.bars) {
      const w = (W - L - 6) / n;
      s.values.forEach((y, i) => num(y) && g.append(svg("rect", { x: L + i * w + w * 0.1, width: w * 0.8, y: Y(y), height: H - B - Y(y),
        fill: s.colours ? s.colours[i] : s.colour }, svg("title", {}, `${opts.what || "step"} ${i + 1}: ${opts.label(y)}`))));
    } else {
      const d = s.values.map((y, i) => num(y) ? `${i ? "L" : "M"}${X(i).toFixed(1)},${Y(y).toFixed(1)}` : "").join("");
      g.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 1.8, "vector-effect": "non-scaling-stroke" }));
    }
  }
  const box = el("div", { class: "plot-box", style: "position:relative" }, g);
  if (opts.onPick) {
    const cur = el("div", { class: "cursor" });
    box.append(cur);
    box.style.cursor = "crosshair";
    box.addEventListener("click", e => {
      const r = g.getBoundingClientRect(), fx = (e.clientX - r.left) / r.width * W;
      opts.onPick(Math.round((fx - L) / (W - L - 6) * (n - 1)));
    });
    box.moveTo = i => { cur.style.left = `${(X(i) / W) * 100}%`; };
  }
  return box;
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(p => p[1] !== null && p[1] !== undefined && p[1] !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function timingSplit(v) {
  if (!num(v.total_s)) return el("div", { class: "muted", text: "no timing (the video did not finish)" });
  const parts = [["text", v.text_s, "#8aa4d6"], ["denoise", v.denoise_s, "#2f6fde"], ["decode", v.decode_s, "#e8a13a"]];
  const other = Math.max(0, v.total_s - parts.reduce((a, p) => a + (p[1] || 0), 0));
  parts.push(["other", other, "#c9ced6"]);
  return el("div", {},
    el("div", { class: "split", title: "text encode / denoise / decode / other" }, parts.map(p =>
      el("span", { style: `width:${100 * (p[1] || 0) / v.total_s}%;background:${p[2]}`, title: `${p[0]} ${secs(p[1])}` }))),
    el("div", { class: "legend" }, parts.map(p => el("span", {}, el("i", { style: `background:${p[2]}` }), `${p[0]} ${secs(p[1])}`)),
      el("span", { text: `total ${secs(v.total_s)}` })));
}

function reuseStrips(v) {
  const branches = Object.entries(v.reuse || {});
  if (!branches.length) return null;
  const shade = f => `hsl(217, 70%, ${Math.round(92 - f * 52)}%)`;
  return el("div", {}, el("h2", { text: "Work per forward, by CFG branch (dark: computed, pale: reused)" }),
    branches.map(([b, fr]) => el("div", {}, el("div", { class: "legend", text: `${b}: ${v.reused[b]} of ${fr.length} forwards reused some work` }),
      el("div", { class: "reuse" }, fr.map((f, i) => el("span", { style: `background:${shade(f)}`, title: `forward ${i + 1}: ${(f * 100).toFixed(0)}% computed` }))))));
}

function openDetail(index) {
  closeDetail(false);
  current = index;
  const v = VIDEOS[index];
  const panel = document.querySelector("#detail .panel");
  const pos = state.shown.findIndex(x => x.index === index);
  const step = d => () => { const n = state.shown[pos + d]; if (n) openDetail(n.index); };
  const head = el("div", { class: "detail-head" },
    el("div", {}, el("h1", { text: v.name }), el("div", { class: "badges" }, el("span", { class: "badge " + v.status, text: v.status }),
      el("span", { class: "badge cache", text: v.cache }), v.ref ? el("span", { class: "badge cache", text: "reference: " + v.ref.cache }) : null),
      el("div", { style: "margin-top:6px", text: v.prompt || "" })),
    el("div", { class: "nav" }, el("button", { id: "d-prev", text: "‹", title: "previous (←)", disabled: pos <= 0, onclick: step(-1) }),
      el("button", { id: "d-next", text: "›", title: "next (→)", disabled: pos < 0 || pos >= state.shown.length - 1, onclick: step(1) }),
      el("button", { id: "d-close", text: "close", title: "close (Esc)", onclick: () => closeDetail(true) })));
  const body = [head];
  if (v.error) body.push(el("div", { class: "errbox", text: v.error }));
  const clips = [];
  if (v.ref && v.ref.mp4) clips.push([v.ref.mp4, v.ref.poster, `reference: ${v.ref.dir !== "." ? v.ref.dir + "/" : ""}${v.ref.name} (${v.ref.cache}, ${secs(v.ref.total_s)})`]);
  if (v.mp4) clips.push([v.mp4, v.poster, `this: ${v.dir !== "." ? v.dir + "/" : ""}${v.name} (${v.cache}, ${secs(v.total_s)})`]);
  let strip = null, psnrPlot = null;
  if (clips.length) {
    const vids = clips.map(c => el("video", { src: c[0], poster: c[1], muted: true, playsinline: true, preload: "auto", class: "clip" }));
    vids.forEach(x => { x.muted = true; });
    const frames = v.frames || 1;
    const slider = el("input", { type: "range", min: 0, max: frames - 1, value: 0, id: "d-seek" });
    const label = el("span", { class: "muted", id: "d-frame" });
    const playBtn = el("button", { id: "d-play", text: "▶ play" });
    body.push(el("div", { class: "players" }, clips.map((c, i) => el("figure", {}, vids[i], el("figcaption", { text: c[2] })))));
    body.push(el("div", { class: "transport" }, playBtn,
      el("button", { text: "◀ frame", onclick: () => { player.pause(); player.seek(player.frame() - 1); } }),
      el("button", { text: "frame ▶", onclick: () => { player.pause(); player.seek(player.frame() + 1); } }),
      slider, label,
      el("select", { onchange: e => player.rate(Number(e.target.value)) }, [1, 0.5, 0.25].map(r => el("option", { value: r, text: r + "×" })))));
    const onFrame = f => {
      slider.value = f;
      label.textContent = `frame ${f + 1} / ${frames}` + (v.psnr_frames && num(v.psnr_frames[f]) ? ` · ${db(v.psnr_frames[f])}` : "");
      if (strip) strip.cursor.style.left = `${(f + 0.5) / frames * 100}%`;
      if (psnrPlot && psnrPlot.moveTo) psnrPlot.moveTo(f);
    };
    player = new Player(vids, v.fps, frames, onFrame);
    playBtn.addEventListener("click", () => { if (player.playing) player.pause(); else player.play(); });
    for (const x of vids) {
      x.addEventListener("play", () => { playBtn.textContent = "❚❚ pause"; });
      x.addEventListener("pause", () => { playBtn.textContent = "▶ play"; });
    }
    slider.addEventListener("input", () => { const f = Number(slider.value); player.pause(); player.seek(f); });
    if (v.strip) {
      const img = el("img", { src: v.strip, alt: "difference over time" });
      const cursor = el("div", { class: "cursor" });
      strip = el("div", { class: "strip", id: "d-strip", title: "where and when this video differs from the reference: click to seek" }, img, cursor);
      strip.cursor = cursor;
      strip.addEventListener("click", e => {
        const r = strip.getBoundingClientRect();
        player.pause();
        player.seek(Math.floor((e.clientX - r.left) / r.width * frames));
      });
      body.push(strip, el("div", { class: "legend", text: `difference heat strip: one cell per frame, left to right; black = equal, ` +
        `pale yellow = mean |difference| of ${Math.round(DATA.strip_full_scale * 100)}% of the range or more` }));
    }
    setTimeout(() => onFrame(0));
  } else {
    body.push(el("div", { class: "muted", style: "margin:14px 0", text: v.status === "missing" ? "The MP4 this report names is missing." : "No video." }));
  }
  const plots = el("div", { class: "plots" });
  if (v.psnr_frames && v.psnr_frames.length) {
    psnrPlot = linePlot([{ values: v.psnr_frames.map(x => Math.min(x, 60)), colour: "#2f6fde" }],
      { label: y => y.toFixed(1) + " dB", xlabel: "frame", onPick: f => { player.pause(); player.seek(f); } });
    plots.append(el("div", { class: "plot" }, el("h2", { text: `PSNR per frame: mean ${db(v.psnr)}, worst ${db(v.psnr_min)}; ` +
      `SSIM mean ${fmt(v.ssim, 4)}, worst ${fmt(v.ssim_min, 4)}` }), psnrPlot));
  }
  if (v.step_s && v.step_s.length) {
    const fr = Object.values(v.reuse || {});
    const perStep = v.step_s.map((_, i) => { const fs = fr.map(b => b[i]).filter(num); return fs.length ? fs.reduce((a, b) => a + b) / fs.length : 1; });
    const series = [{ values: v.step_s, colours: perStep.map(f => `hsl(217, 70%, ${Math.round(80 - f * 40)}%)`) }];
    plots.append(el("div", { class: "plot" }, el("h2", { text: `Time per denoising step (mean ${secs(v.step_s.reduce((a, b) => a + b, 0) / v.step_s.length)}` +
      (v.ref && v.ref.step_s && v.ref.step_s.length ? `; reference ${secs(v.ref.step_s.reduce((a, b) => a + b, 0) / v.ref.step_s.length)})` : ")") }),
      linePlot(series, { bars: true, min: 0, label: secs, xlabel: "step" })));
  }
  body.push(plots);
  const params = Object.entries(v.params || {}).map(([k, x]) => `${k}=${typeof x === "object" ? JSON.stringify(x) : x}`).join(", ");
  const links = el("span", {}, [[v.mp4, "MP4"], [v.report, "report JSON"], [v.ref && v.ref.mp4, "reference MP4"], [v.ref && v.ref.report, "reference JSON"]]
    .filter(l => l[0]).map(l => [el("a", { href: l[0], text: l[1] }), " "]));
  body.push(el("div", { class: "cols" },
    el("div", {}, el("h2", { text: "Timing" }), timingSplit(v), reuseStrips(v)),
    el("div", {}, el("h2", { text: "Job" }), facts([
      ["seed", v.seed], ["model", v.model && `${v.model} (${v.family})`],
      ["size", v.width && `${v.frames} frames × ${v.width}×${v.height} at ${v.fps} fps`], ["steps", v.steps], ["guidance", v.guidance],
      ["negative prompt", v.negative_prompt], ["cache", v.cache], ["parameters", params], ["compute ratio", num(v.compute_ratio) ? v.compute_ratio.toFixed(3) : null],
      ["speedup", v.ref ? `${times(v.speedup)} total, ${times(v.speedup_denoise)} denoise` : null],
      ["peak memory", num(v.peak_bytes) ? `${bytes(v.peak_bytes)} (${v.memory_kind || "?"})` : null], ["device", v.device], ["dtype", v.dtype],
      ["folder", v.dir], ["cache warnings", v.cache_warnings && v.cache_warnings.join("; ")],
      ...Object.entries(v.extra || {}).map(([k, x]) => [k, String(x)]), ["files", links]]))));
  panel.replaceChildren(...body);
  document.getElementById("detail").hidden = false;
  document.body.style.overflow = "hidden";
}

function closeDetail(hide) {
  if (player) { player.stop(); player = null; }
  current = -1;
  if (hide) { document.getElementById("detail").hidden = true; document.body.style.overflow = ""; }
}

document.getElementById("detail").addEventListener("click", e => { if (e.target.id === "detail") closeDetail(true); });
document.addEventListener("keydown", e => {
  if (current < 0) return;
  if (e.key === "Escape") closeDetail(true);
  else if (e.key === "ArrowRight") document.getElementById("d-next").click();
  else if (e.key === "ArrowLeft") document.getElementById("d-prev").click();
  else if (e.key === " " && player && e.target.tagName !== "INPUT") { e.preventDefault(); document.getElementById("d-play").click(); }
});

header(); problems(); summary(); bench(); unpaired(); controls(); draw();
window.vidcacheReport = { state, draw, openDetail, closeDetail, get player() { return player; } };
