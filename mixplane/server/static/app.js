// The mixplane dashboard: polls the server's JSON endpoints and draws SVG charts by hand.
//
// GET /v1/dashboard/jobs (every job in a line) and GET /v1/jobs/ID/dashboard (the selected
// job's panels) every POLL_MS, with the protocol header. On a server with tokens the requests
// carry a session cookie (HttpOnly, SameSite=Strict, viewer role): when they are refused (401)
// the page asks for a token once and trades it (POST /v1/session, "Authorization: Bearer
// TOKEN") for the cookie; the token is then forgotten, never kept in the page or its address.
// An old link /?token=TOKEN is traded the same way and the token removed from the address.
// No libraries, no network access beyond the server. Every text from the server goes in
// through textContent (never innerHTML).
// Each chart's container carries data-points="N" (the data points drawn), and <body> carries
// data-updates="N" (refreshes so far), for tests and for anyone watching.
"use strict";

(() => {
  const POLL_MS = 1500;
  const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, never fetched
  const PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#7f7f7f",
  ];

  const headers = { "X-Mixplane-Protocol": "1", Accept: "application/json" };

  const state = {
    selected: null, // job id shown
    hidden: new Map(), // job id -> Set of hidden component indices
    last: null, // the last dashboard answer (redrawn on resize)
    weightsX: null, // "step" | "chunk" | "version"; null: chosen per job
    updates: 0,
  };

  const $ = (id) => document.getElementById(id);

  // -- helpers --------------------------------------------------------------------------------
  function color(i) {
    return i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.508) % 360}, 55%, 45%)`;
  }

  function fmt(v, digits = 3) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e15 || a < 1e-3)) return v.toExponential(1);
    if (a >= 1e9) return (v / 1e9).toPrecision(digits) + "G";
    if (a >= 1e6) return (v / 1e6).toPrecision(digits) + "M";
    if (a >= 1e4) return (v / 1e3).toPrecision(digits) + "k";
    if (Number.isInteger(v)) return String(v);
    return Number(v.toPrecision(digits)).toString();
  }

  function pct(v) {
    return (100 * v).toFixed(1) + "%";
  }

  function svg(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function html(tag, attrs, text, parent) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (parent) parent.appendChild(node);
    return node;
  }

  function ticks(lo, hi, count) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const err = raw / mag;
    const step = mag * (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1);
    const out = [];
    for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) {
      out.push(Number((i * step).toPrecision(12)));
    }
    return out;
  }

  function extent(values, { zero = false, pad = 0.05 } = {}) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === Infinity) return [0, 1];
    if (zero) {
      lo = Math.min(lo, 0);
      hi = Math.max(hi, 0);
    }
    if (hi === lo) {
      const d = Math.abs(hi) * 0.1 || 1;
      return [zero && lo === 0 ? 0 : lo - d, hi + d];
    }
    const d = (hi - lo) * pad;
    return [zero && lo === 0 ? 0 : lo - d, hi + d];
  }

  // -- charts ---------------------------------------------------------------------------------
  // series: [{label, color, points: [[x, y]...], kind: "line"|"step"|"dots"|"dashed"|"bars"}]
  function plot(box, opts) {
    const width = Math.max(320, Math.floor(box.clientWidth || 560));
    const height = opts.height || 240;
    const m = { l: 62, r: 16, t: 12, b: 44 };
    const root = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": opts.title || opts.name, class: "plot",
    });
    const series = opts.series.filter((s) => s.points.length);
    const xs = [];
    const ys = [];
    for (const s of series) {
      for (const [x, y] of s.points) {
        xs.push(x);
        ys.push(y);
      }
    }
    const [x0, x1] = opts.xDomain || extent(xs, { pad: 0.02 });
    const [y0, y1] = extent(ys, { zero: Boolean(opts.yZero) });
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    const X = (v) => m.l + ((v - x0) / (x1 - x0 || 1)) * pw;
    const Y = (v) => m.t + ph - ((v - y0) / (y1 - y0 || 1)) * ph;

    const grid = svg("g", { class: "grid" }, root);
    for (const t of ticks(y0, y1, 5)) {
      svg("line", { x1: m.l, x2: m.l + pw, y1: Y(t), y2: Y(t) }, grid);
      const label = svg("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", class: "tick" }, root);
      label.textContent = (opts.yFormat || fmt)(t);
    }
    const xTicks = opts.xTicks || ticks(x0, x1, Math.max(2, Math.floor(pw / 90)));
    for (const t of xTicks) {
      if (t < x0 || t > x1) continue;
      svg("line", { x1: X(t), x2: X(t), y1: m.t, y2: m.t + ph, class: "vgrid" }, grid);
      const label = svg("text", { x: X(t), y: m.t + ph + 16, "text-anchor": "middle", class: "tick" }, root);
      label.textContent = (opts.xFormat || fmt)(t);
    }
    svg("rect", { x: m.l, y: m.t, width: pw, height: ph, class: "frame" }, root);
    const xl = svg("text", { x: m.l + pw / 2, y: height - 6, "text-anchor": "middle", class: "axis-label" }, root);
    xl.textContent = opts.xLabel || "";
    const yl = svg("text", {
      x: 0, y: 0, "text-anchor": "middle", class: "axis-label",
      transform: `translate(14 ${m.t + ph / 2}) rotate(-90)`,
    }, root);
    yl.textContent = opts.yLabel || "";

    const clipId = `clip-${opts.name}`;
    const clip = svg("clipPath", { id: clipId }, svg("defs", {}, root));
    svg("rect", { x: m.l, y: m.t - 3, width: pw, height: ph + 6 }, clip);
    const layer = svg("g", { "clip-path": `url(#${clipId})` }, root);
    let total = 0;
    for (const s of series) {
      const pts = s.points;
      total += pts.length;
      const common = { "data-series": s.label, "data-points": pts.length, stroke: s.color };
      if (s.kind === "bars") {
        const g = svg("g", { ...common, fill: s.color, class: "bars" }, layer);
        const w = Math.max(1, (pw / Math.max(1, x1 - x0)) * 0.8);
        for (const [x, y] of pts) {
          const top = Math.min(Y(y), Y(0));
          const r = svg("rect", {
            x: X(x) - w / 2, y: top, width: w, height: Math.max(1, Math.abs(Y(0) - Y(y))),
          }, g);
          if (opts.barTitle) svg("title", {}, r).textContent = opts.barTitle(x, y);
        }
        continue;
      }
      let d = "";
      if (s.kind === "dots") {
        d = pts.map(([x, y]) => `M${X(x).toFixed(1)},${Y(y).toFixed(1)}h0`).join("");
        svg("path", { ...common, d, class: "dots" }, layer);
        continue;
      }
      if (s.kind === "step") {
        d = `M${X(pts[0][0]).toFixed(1)},${Y(pts[0][1]).toFixed(1)}`;
        for (let i = 1; i < pts.length; i++) {
          d += `H${X(pts[i][0]).toFixed(1)}V${Y(pts[i][1]).toFixed(1)}`;
        }
        if (opts.extendTo !== undefined) d += `H${X(opts.extendTo).toFixed(1)}`;
      } else {
        d = "M" + pts.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join("L");
      }
      svg("path", { ...common, d, class: s.kind === "dashed" ? "line dashed" : "line" }, layer);
      if (pts.length === 1) {
        svg("path", { ...common, d: `M${X(pts[0][0]).toFixed(1)},${Y(pts[0][1]).toFixed(1)}h0`, class: "dots" }, layer);
      }
    }
    if (!series.length) {
      const t = svg("text", { x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle", class: "empty" }, root);
      t.textContent = opts.empty || "no data yet";
    }
    box.replaceChildren(root);
    box.dataset.chart = opts.name;
    box.dataset.points = String(total);
  }

  function hbars(box, opts) {
    const width = Math.max(320, Math.floor(box.clientWidth || 560));
    const row = 24;
    const m = { l: Math.min(200, Math.floor(width * 0.32)), r: 150, t: 8, b: 30 };
    const height = m.t + m.b + row * Math.max(1, opts.items.length);
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": opts.name, class: "plot" });
    const pw = width - m.l - m.r;
    const max = Math.max(1, ...opts.items.map((it) => it.value));
    const grid = svg("g", { class: "grid" }, root);
    for (const t of ticks(0, max, Math.max(2, Math.floor(pw / 90)))) {
      const x = m.l + (t / max) * pw;
      svg("line", { x1: x, x2: x, y1: m.t, y2: height - m.b, class: "vgrid" }, grid);
      const label = svg("text", { x, y: height - m.b + 14, "text-anchor": "middle", class: "tick" }, root);
      label.textContent = fmt(t);
    }
    const xl = svg("text", { x: m.l + pw / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, root);
    xl.textContent = opts.valueLabel;
    const chars = Math.max(6, Math.floor((m.l - 10) / 7));
    let total = 0;
    opts.items.forEach((it, i) => {
      const y = m.t + i * row;
      const name = it.label.length > chars ? it.label.slice(0, chars - 1) + "…" : it.label;
      const label = svg("text", { x: m.l - 8, y: y + row / 2 + 4, "text-anchor": "end", class: "bar-label" }, root);
      label.textContent = name;
      svg("title", {}, label).textContent = it.label;
      const bar = svg("rect", {
        x: m.l, y: y + 4, width: Math.max(it.value > 0 ? 1 : 0, (it.value / max) * pw),
        height: row - 8, fill: it.color, class: it.dim ? "bar dim" : "bar",
        "data-series": it.label, "data-points": 1,
      }, root);
      svg("title", {}, bar).textContent = `${it.label}: ${it.value}`;
      const note = svg("text", { x: m.l + (it.value / max) * pw + 6, y: y + row / 2 + 4, class: "bar-note" }, root);
      note.textContent = it.note;
      total += 1;
    });
    box.replaceChildren(root);
    box.dataset.chart = opts.name;
    box.dataset.points = String(total);
  }

  // -- fetching -------------------------------------------------------------------------------
  async function get(path) {
    const answer = await fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
    if (answer.status === 401) {
      showLogin(true);
      throw new Error("401 the dashboard needs a token");
    }
    if (!answer.ok) {
      let message = answer.statusText;
      try {
        message = (await answer.json()).error || message;
      } catch (_) {
        // not JSON: keep the status text
      }
      throw new Error(`${answer.status} ${message}`);
    }
    return answer.json();
  }

  function setStatus(text, bad) {
    const node = $("status");
    node.textContent = text;
    node.classList.toggle("bad", Boolean(bad));
  }

  function wantedJob() {
    const match = /^#job=(.+)$/.exec(window.location.hash);
    return match ? decodeURIComponent(match[1]) : null;
  }

  async function refresh() {
    try {
      const overview = await get("/v1/dashboard/jobs");
      const ids = overview.jobs.map((j) => j.job_id);
      const wanted = wantedJob();
      if (wanted && ids.includes(wanted)) state.selected = wanted;
      if (!ids.includes(state.selected)) state.selected = ids.length ? ids[0] : null;
      renderJobs(overview.jobs);
      if (state.selected !== null) {
        const path = `/v1/jobs/${encodeURIComponent(state.selected)}/dashboard`;
        state.last = await get(path);
        renderJob(state.last);
      } else {
        state.last = null;
        $("job").hidden = true;
      }
      state.updates += 1;
      document.body.dataset.updates = String(state.updates);
      setStatus(`live · updated ${new Date().toLocaleTimeString()}`, false);
    } catch (err) {
      setStatus(`cannot refresh: ${err.message}`, true);
    }
  }

  // -- session --------------------------------------------------------------------------------
  function showLogin(shown) {
    const appearing = shown && $("login").hidden;
    $("login").hidden = !shown;
    $("logout").hidden = shown;
    if (appearing) $("login-token").focus();
  }

  // Trade a token for the session cookie; true when the server accepted it.
  async function openSession(token) {
    const answer = await fetch("/v1/session", {
      method: "POST",
      headers: { ...headers, Authorization: "Bearer " + token },
      cache: "no-store",
      credentials: "same-origin",
    });
    if (!answer.ok) {
      let message = answer.statusText;
      try {
        message = (await answer.json()).error || message;
      } catch (_) {
        // not JSON: keep the status text
      }
      $("login-note").textContent = `refused: ${answer.status} ${message}`;
      return false;
    }
    const session = await answer.json();
    $("login-note").textContent = "";
    $("who").textContent = `${session.name} (viewer)`;
    showLogin(false);
    return true;
  }

  async function loop() {
    if (!document.hidden) await refresh();
    window.setTimeout(loop, POLL_MS);
  }

  // -- rendering ------------------------------------------------------------------------------
  function renderJobs(jobs) {
    const body = $("jobs").querySelector("tbody");
    const rows = [];
    for (const j of jobs) {
      const tr = html("tr", { class: j.job_id === state.selected ? "selected" : "" });
      const cell = html("td", {}, null, tr);
      html("a", { href: "#job=" + encodeURIComponent(j.job_id) }, j.job_id, cell);
      html("td", {}, j.algorithm || "static", tr);
      html("td", { class: "num" }, j.selectors.length, tr);
      html("td", { class: "num" }, fmt(j.feedback), tr);
      html("td", { class: "num" }, j.last_step === null ? "–" : j.last_step, tr);
      html("td", { class: "num" }, fmt(j.mixture_changes), tr);
      html("td", { class: "num" }, fmt(j.chunks_planned), tr);
      html("td", { class: "num" }, fmt(j.chunks_served), tr);
      html("td", { class: "num" }, j.chunks_per_s.toFixed(1), tr);
      html("td", { class: "num" }, fmt(j.consumers), tr);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    $("no-jobs").hidden = jobs.length > 0;
  }

  function hiddenOf(jobId) {
    if (!state.hidden.has(jobId)) state.hidden.set(jobId, new Set());
    return state.hidden.get(jobId);
  }

  function renderLegend(d) {
    const hidden = hiddenOf(d.job_id);
    const legend = $("legend");
    const items = d.selectors.map((sel, i) => {
      const label = html("label", { class: hidden.has(i) ? "item off" : "item" });
      const box = html("input", { type: "checkbox", "data-component": i }, null, label);
      box.checked = !hidden.has(i);
      box.addEventListener("change", () => {
        if (box.checked) hidden.delete(i);
        else hidden.add(i);
        renderJob(state.last);
      });
      const swatch = html("span", { class: "swatch" }, null, label);
      swatch.style.backgroundColor = color(i);
      html("span", { class: "name" }, sel, label);
      html("span", { class: "weight" }, pct(d.weights.current[i] || 0), label);
      return label;
    });
    legend.replaceChildren(...items);
  }

  function renderJob(d) {
    if (!d) return;
    $("job").hidden = false;
    $("job-title").textContent = d.job_id;
    const facts = [
      d.algorithm ? `algorithm ${d.algorithm}` : "static mixture",
      `${d.selectors.length} components`,
      `budget in ${d.unit}`,
      `${fmt(d.planned.chunks)} chunks planned`,
    ];
    $("job-facts").textContent = facts.join(" · ");
    renderLegend(d);
    const hidden = hiddenOf(d.job_id);
    const shown = d.selectors.map((_, i) => !hidden.has(i));
    renderWeights(d, shown);
    renderPlanned(d, shown);
    renderLosses(d, shown);
    renderThroughput(d);
    renderConsumers(d);
  }

  function renderWeights(d, shown) {
    const select = $("weights-x");
    const hasSteps = d.weights.history.some((e) => e.step !== null && e.step !== undefined);
    const axis = state.weightsX || (hasSteps ? "step" : "chunk");
    select.value = axis;
    let lastStep = 0;
    const xs = d.weights.history.map((e) => {
      if (axis === "chunk") return e.chunk;
      if (axis === "version") return e.version;
      if (e.step !== null && e.step !== undefined) lastStep = e.step;
      return lastStep;
    });
    const series = d.selectors.map((sel, i) => ({
      label: sel,
      color: color(i),
      kind: "step",
      points: shown[i] ? d.weights.history.map((e, n) => [xs[n], e.weights[i]]) : [],
    }));
    let extendTo;
    if (axis === "step" && d.losses.steps.length) extendTo = d.losses.steps[d.losses.steps.length - 1];
    if (axis === "chunk") extendTo = d.planned.chunks;
    const right = Math.max(xs.length ? xs[xs.length - 1] : 0, extendTo || 0);
    plot($("chart-weights"), {
      name: "weights",
      title: "mixture weights over time",
      series,
      xLabel: { step: "training step (feedback)", chunk: "chunk (weights apply from)", version: "mixture change" }[axis],
      yLabel: "weight",
      yZero: true,
      xDomain: xs.length ? [Math.min(...xs), right > Math.min(...xs) ? right : Math.min(...xs) + 1] : undefined,
      extendTo,
      yFormat: (v) => fmt(v, 2),
    });
    const shownCount = d.weights.history.length;
    $("weights-note").textContent = shownCount < d.weights.total
      ? `${shownCount} of ${d.weights.total} mixture log entries (evenly thinned)`
      : `${d.weights.total} mixture log entr${d.weights.total === 1 ? "y" : "ies"}`;
  }

  function renderPlanned(d, shown) {
    const tokens = d.planned.tokens;
    const values = tokens || d.planned.samples;
    const what = tokens ? "tokens" : "samples";
    const sum = values.reduce((a, b) => a + b, 0);
    $("planned-title").textContent = `Planned ${what} per component`;
    hbars($("chart-planned"), {
      name: "planned",
      valueLabel: tokens ? "tokens planned (estimated)" : "samples planned",
      items: d.selectors.map((sel, i) => ({
        label: sel,
        value: values[i],
        color: color(i),
        dim: !shown[i],
        note: `${fmt(values[i])} · ${sum ? pct(values[i] / sum) : "–"} (w ${pct(d.weights.current[i] || 0)})`,
      })),
    });
    $("planned-note").textContent = `${fmt(sum)} ${what} in ${fmt(d.planned.chunks)} chunks planned since the server holds the job; w: weight in force now`;
  }

  function renderLosses(d, shown) {
    const L = d.losses;
    const useN = Boolean(L.n);
    const x = (c, t) => (useN ? L.n[c][t] : L.steps[t]);
    const curves = [];
    const dots = [];
    d.selectors.forEach((sel, c) => {
      if (!shown[c]) return;
      const pts = [];
      L.mean[c].forEach((v, t) => {
        if (v !== null) pts.push([x(c, t), v]);
      });
      dots.push({ label: sel, color: color(c), kind: "dots", points: pts });
      const fit = d.fits && d.fits.components[c];
      if (fit && fit.curve) {
        curves.push({
          label: sel + " (fit)",
          color: color(c),
          kind: "dashed",
          points: fit.curve.n.map((n, i) => [n, fit.curve.loss[i]]),
        });
      }
    });
    const series = [...curves, ...dots]; // the dots on top
    plot($("chart-losses"), {
      name: "losses",
      title: "recent loss per component",
      series,
      height: 300,
      xLabel: useN ? "samples trained n (as ADO counts them)" : "training step",
      yLabel: "mean loss per token",
      empty: "no feedback yet (POST /v1/jobs/ID/feedback)",
    });
    const table = $("laws");
    if (d.fits) {
      table.hidden = false;
      const rows = d.selectors.map((sel, c) => {
        const fit = d.fits.components[c];
        const tr = html("tr", { class: shown[c] ? "" : "off" });
        const name = html("td", {}, null, tr);
        const swatch = html("span", { class: "swatch" }, null, name);
        swatch.style.backgroundColor = color(c);
        html("span", {}, sel, name);
        html("td", { class: "num" }, fit.law ? fmt(fit.law.eps, 4) : "not fitted", tr);
        html("td", { class: "num" }, fit.law ? fmt(fit.law.beta, 4) : "", tr);
        html("td", { class: "num" }, fit.law ? fmt(fit.law.alpha, 3) : "", tr);
        html("td", { class: "num" }, fmt(d.fits.n[c]), tr);
        const means = L.mean[c].filter((v) => v !== null);
        html("td", { class: "num" }, means.length ? fmt(means[means.length - 1], 4) : "–", tr);
        return tr;
      });
      table.querySelector("tbody").replaceChildren(...rows);
    } else {
      table.hidden = true;
    }
    const last = L.steps.length ? L.steps[L.steps.length - 1] : null;
    const fits = d.fits ? ` · ${d.fits.refits} refit${d.fits.refits === 1 ? "" : "s"}` : "";
    $("losses-note").textContent = `last ${L.steps.length} of ${L.received} feedback messages` +
      (last === null ? "" : ` (up to step ${last})`) + fits;
  }

  function renderThroughput(d) {
    const T = d.throughput;
    const now = d.time;
    const pts = T.series.map(([t, r]) => [t - now, r]);
    const oldest = pts.length ? pts[0][0] : 0;
    plot($("chart-throughput"), {
      xDomain: [Math.min(-60, oldest), 0],
      name: "throughput",
      title: "chunks served per second",
      series: [{ label: "chunks/s", color: color(0), kind: pts.length > 1 ? "line" : "dots", points: pts }],
      xLabel: "seconds (0 = now)",
      yLabel: "chunks served / s",
      yZero: true,
      empty: "no chunks served yet",
    });
    $("throughput-note").textContent =
      `${fmt(T.chunks_served)} chunk descriptors served · ${T.chunks_per_s.toFixed(1)} /s over the last ${T.window_s} s`;
  }

  function renderConsumers(d) {
    const C = d.consumers;
    const pts = C.shown.map((c) => [c.consumer, c.j]);
    plot($("chart-consumers"), {
      name: "consumers",
      title: "each consumer's chunk",
      series: [{ label: "position", color: color(0), kind: "bars", points: pts }],
      xLabel: "consumer (worker × dp_groups + dp_group)",
      yLabel: "chunk j of its sequence",
      yZero: true,
      xDomain: [-0.5, Math.max(0.5, pts.length - 0.5)],
      xTicks: ticks(0, Math.max(1, pts.length - 1), 6).filter((t) => Number.isInteger(t)),
      barTitle: (x, y) => {
        const c = C.shown[x];
        return `consumer ${x} (dp_group ${c.dp_group}, worker ${c.worker}): j ${y}, chunk ${c.chunk}`;
      },
    });
    const more = C.count > C.shown.length ? ` (first ${C.shown.length} shown)` : "";
    $("consumers-note").textContent =
      `${C.count} consumers${more} · ${C.live_ranks} live ranks · j from ${C.min_j} to ${C.max_j} (mean ${fmt(C.mean_j)})`;
  }

  // -- wiring ---------------------------------------------------------------------------------
  $("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const field = $("login-token");
    const token = field.value.trim();
    field.value = "";
    if (token && (await openSession(token))) refresh();
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/v1/session", { method: "DELETE", headers, credentials: "same-origin" });
    $("who").textContent = "";
    showLogin(true);
  });
  $("weights-x").addEventListener("change", (e) => {
    state.weightsX = e.target.value;
    renderJob(state.last);
  });
  $("show-all").addEventListener("click", () => {
    if (!state.last) return;
    hiddenOf(state.last.job_id).clear();
    renderJob(state.last);
  });
  $("show-none").addEventListener("click", () => {
    if (!state.last) return;
    const hidden = hiddenOf(state.last.job_id);
    state.last.selectors.forEach((_, i) => hidden.add(i));
    renderJob(state.last);
  });
  window.addEventListener("hashchange", () => {
    const wanted = wantedJob();
    if (wanted) {
      state.selected = wanted;
      refresh();
    }
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => renderJob(state.last), 150);
  });
  async function start() {
    const query = new URLSearchParams(window.location.search);
    const legacy = query.get("token"); // an old /?token= link: trade it, drop it from the address
    if (legacy !== null) {
      query.delete("token");
      const rest = query.toString();
      window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : "") + window.location.hash);
      await openSession(legacy);
    }
    loop();
  }

  start();
})();
