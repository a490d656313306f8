// The analysis panels: a step's trend with its alert, in progress vs dropped with the projected
// rate, time to convert, channels and landing pages, the audience, experiments. Each reads one JSON endpoint
// (linked in the footer) and draws it with plain DOM and hand-drawn SVG; every value from the
// counters is set as text or an attribute, never as HTML. Uses dashboard.js's helpers.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MIN_TREND_ENTERED = 20; // a value's rate is compared only on this many entries
const WORSE_BY = 0.15; // the trend moves to another value only when its rate is this much lower
const panels = {
  step: null,
  value: null, // "" = all traffic
  valueChosen: false,
};

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const clock = (ms) => new Date(ms).toISOString().slice(11, 16);
const day = (ms) => new Date(ms).toISOString().slice(5, 10);
const rate = (r) => (r === null || r === undefined ? "–" : `${(r * 100).toFixed(1)}%`);
const params = (values) => new URLSearchParams(Object.entries(values).filter(([, v]) => v !== "" && v !== null && v !== undefined));

function panelError(id, error) {
  $(id).replaceChildren(el("p", { class: "error" }, `cannot load: ${error.message}`));
}

// ---- trend ------------------------------------------------------------------------------

async function refreshTrend(live) {
  const funnel = live.funnels[state.funnel];
  const names = funnel.steps.map((s) => s.name);
  if (panels.funnel !== state.funnel) {
    panels.funnel = state.funnel;
    panels.step = null;
    panels.value = null;
    panels.valueChosen = false;
  }
  const query = { window: state.window };
  if (panels.step) query.step = panels.step;
  // which breakdown the step's alert judges, and its values
  const probe = await getJSON(`/funnels/${encodeURIComponent(state.funnel)}/series?${params({ ...query, bucket: "" })}`);
  panels.step = probe.step;
  fillSelect($("trend-step"), names.slice(1), panels.step);
  const rule = probe.rules.find((r) => r.by.length === 1);
  const dim = rule ? rule.by[0] : state.by || "";
  let values = [];
  if (dim) {
    const report = await getJSON(`/funnels/${encodeURIComponent(state.funnel)}?${params({ window: state.window, by: dim })}`);
    // the top values (the answer holds at most CONVERSIONS_BREAKDOWN_CAP); "(other)" sums the
    // rest, which have no trend of their own
    values = Object.keys(report.breakdown)
      .filter((v) => v !== "(other)")
      .sort((a, b) => report.breakdown[b][0].entered - report.breakdown[a][0].entered);
    const firing = live.alerts.firing.find((a) => a.funnel === state.funnel && a.step === panels.step && dim in a.by);
    const latest = live.alerts.recent.find((a) => a.funnel === state.funnel && a.step === panels.step && dim in a.by);
    // until the reader chooses: the value that fires, else the one doing worst at this step
    // (switching only for a clear gap, so noise does not make the chart jump)
    const k = names.indexOf(panels.step);
    const rateOf = (v) => {
      const steps = report.breakdown[v];
      return steps && steps[k - 1].entered >= MIN_TREND_ENTERED ? steps[k].rate_from_previous : null;
    };
    const ranked = values.filter((v) => rateOf(v) !== null).sort((a, b) => rateOf(a) - rateOf(b));
    if (!panels.valueChosen) {
      const current = panels.value === null ? null : rateOf(panels.value);
      if (firing) panels.value = firing.by[dim] ?? "";
      else if (ranked.length && (current === null || rateOf(ranked[0]) < current - WORSE_BY)) panels.value = ranked[0];
      else if (panels.value === null) panels.value = latest ? latest.by[dim] ?? "" : values[0] ?? "";
    }
  } else {
    panels.value = "";
  }
  $("trend-dim").textContent = dim || "segment";
  fillSelect($("trend-value"), ["", ...values], panels.value, ["all traffic", ...values]);
  $("trend-value").disabled = !dim;
  const body =
    panels.value === "" || !dim
      ? probe
      : await getJSON(`/funnels/${encodeURIComponent(state.funnel)}/series?${params({ ...query, step: panels.step, by: dim, value: panels.value })}`);
  const link = `/funnels/${encodeURIComponent(state.funnel)}/series?${params({ window: state.window, step: panels.step, by: panels.value ? dim : "", value: panels.value })}`;
  $("link-series").href = link;
  $("trend-title").textContent = `Trend: ${body.previous_step} → ${body.step}${body.value ? ` (${body.by}=${body.value})` : ""}`;
  drawTrend(body);
}

function drawTrend(body) {
  const overlay = body.alert;
  const points = overlay ? overlay.points : [];
  const last = points.length ? points[points.length - 1] : null;
  // the last bucket may still be filling: the figure is the last complete one
  const lastBucket = body.buckets.slice(0, -1).reverse().find((b) => b.rate !== null);
  const figures = [
    ["trend-bucket-rate", `last full ${duration(body.bucket_ms)}`, lastBucket ? rate(lastBucket.rate) : "–"],
    ["trend-entered", `entered ${body.previous_step}`, number(body.buckets.reduce((n, b) => n + b.entered_previous, 0))],
  ];
  if (overlay) {
    figures.push(
      ["trend-rate", `rate over ${overlay.rule.window}`, last ? rate(last.rate) : "–"],
      ["trend-baseline", `baseline${last && last.frozen ? " (frozen)" : ""}`, last ? rate(last.baseline_rate) : "–"],
      ["trend-threshold", "fires below", last ? rate(last.fire_below) : "–"],
    );
  }
  $("trend-figures").replaceChildren(
    ...figures.map(([id, label, value]) => el("div", { class: "figure" }, el("div", { class: "muted" }, label), el("div", { class: "big", "data-testid": id }, value))),
  );
  const notes = [];
  if (!overlay) {
    notes.push(
      body.rules.length
        ? `The alert on ${body.step} judges each ${body.rules.map((r) => r.by.join(", ")).join(" / ")} value on its own: choose one to see its baseline and band.`
        : `No alert rule watches ${body.step}.`,
    );
  } else {
    notes.push(
      `Bars: the step's arrivals over the previous step's in each ${duration(body.bucket_ms)} (at most 100 %: arrivals from earlier buckets can outnumber a bucket's entries). Line: the rate over the rule's ${overlay.rule.window} window, as the alert judges it; dashed: its ${overlay.rule.baseline} baseline (frozen while it fires); band: fires below its lower edge, resolves above its upper edge${overlay.rule.confidence ? ` (and only when significant at ${overlay.rule.confidence})` : ""}.`,
    );
    if (overlay.note) notes.push(overlay.note);
  }
  $("trend-note").textContent = notes.join(" ");

  const holder = $("trend-chart");
  const width = Math.max(300, holder.clientWidth || 600);
  const height = 230;
  const pad = { left: 40, right: 10, top: 14, bottom: 24 };
  const start = body.start_ms;
  const end = body.end_ms;
  const x = (t) => pad.left + ((t - start) / (end - start)) * (width - pad.left - pad.right);
  const y = (r) => pad.top + (1 - Math.max(0, Math.min(1, r))) * (height - pad.top - pad.bottom);
  const chart = svg("svg", {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `rate of ${body.step} from ${body.previous_step}`,
    "data-testid": "trend-svg",
    "data-buckets": body.buckets.length,
  });
  for (const r of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(r), y2: y(r), class: "grid" }));
    chart.append(svg("text", { x: pad.left - 4, y: y(r) + 4, class: "axis", "text-anchor": "end" }, `${r * 100}%`));
  }
  const spanDays = end - start > 86400000;
  for (const t of [start, start + (end - start) / 2, end]) {
    chart.append(svg("text", { x: x(t), y: height - 6, class: "axis", "text-anchor": t === start ? "start" : t === end ? "end" : "middle" }, spanDays ? `${day(t)} ${clock(t)}` : clock(t)));
  }
  // the band: fires below its lower edge, resolves above its upper edge
  const banded = points.filter((p) => p.fire_below !== null && p.resolve_above !== null);
  if (banded.length) {
    const upper = banded.map((p) => `${x(p.end_ms)},${y(p.resolve_above)}`);
    const lower = banded.map((p) => `${x(p.end_ms)},${y(p.fire_below)}`).reverse();
    chart.append(svg("polygon", { points: [...upper, ...lower].join(" "), class: "band", "data-testid": "trend-band" }));
  }
  const bar = Math.max(1, (x(start + body.bucket_ms) - x(start)) * 0.7);
  for (const b of body.buckets) {
    if (b.rate === null) continue;
    chart.append(svg("rect", { x: x(b.start_ms + body.bucket_ms / 2) - bar / 2, y: y(b.rate), width: bar, height: Math.max(0, y(0) - y(b.rate)), class: "bucket" }));
  }
  const path = (values) => {
    let d = "";
    let pen = "M";
    for (const [t, r] of values) {
      if (r === null || r === undefined) {
        pen = "M";
        continue;
      }
      d += `${pen}${x(t).toFixed(1)},${y(r).toFixed(1)} `;
      pen = "L";
    }
    return d.trim();
  };
  if (overlay) {
    chart.append(svg("path", { d: path(points.map((p) => [p.end_ms, p.baseline_rate])), class: "baseline", "data-testid": "trend-baseline-line" }));
    chart.append(svg("path", { d: path(points.map((p) => [p.end_ms, p.rate])), class: "line", "data-testid": "trend-line" }));
    for (const change of overlay.changes) {
      const at = x(change.timestamp_ms);
      chart.append(
        svg(
          "g",
          { class: `mark ${change.state}`, "data-testid": "trend-mark", "data-state": change.state },
          svg("line", { x1: at, x2: at, y1: pad.top, y2: y(0) }),
          svg("text", { x: at + 3, y: pad.top + 10 }, `${change.state} ${clock(change.timestamp_ms)}`),
        ),
      );
    }
  } else {
    chart.append(svg("path", { d: path(body.buckets.map((b) => [b.start_ms + body.bucket_ms / 2, b.rate])), class: "line", "data-testid": "trend-line" }));
  }
  holder.replaceChildren(chart);
}

// ---- in progress vs dropped -------------------------------------------------------------

async function refreshProgress() {
  const path = `/funnels/${encodeURIComponent(state.funnel)}/progress?${params({ window: state.window })}`;
  $("link-progress").href = path;
  const body = await getJSON(path);
  if (!body.chained) {
    $("progress-label").textContent = body.note;
    $("progress-steps").replaceChildren();
    return;
  }
  const overall = body.overall;
  $("progress-label").textContent =
    `${number(overall.entered)} attempts opened in the window: ${rate(overall.rate_observed)} completed so far, ` +
    `projected ${rate(overall.rate_projected)}; ${number(overall.in_progress)} in progress, ${number(overall.dropped)} dropped.`;
  $("progress-steps").replaceChildren(
    ...body.steps.map((step) => {
      const total = step.entered || 1;
      const next = step.reached_next ?? step.completed ?? 0;
      const share = (n) => `${((100 * n) / total).toFixed(2)}%`;
      const reasons = Object.entries(step.dropped_by_reason).map(([k, v]) => `${k} ${number(v)}`).join(", ");
      const text =
        step.reached_next === undefined
          ? `${number(step.completed)} completed`
          : `${number(next)} on · ${number(step.in_progress)} in progress · ${number(step.dropped)} dropped` +
            ` · rate ${rate(step.rate_observed)} now, ${rate(step.rate_projected)} projected`;
      return el(
        "div",
        {
          class: "pstep",
          "data-testid": "progress-step",
          "data-step": step.step,
          "data-entered": String(step.entered),
          "data-in-progress": String(step.in_progress),
          "data-dropped": String(step.dropped),
          "data-next": String(next),
        },
        el("div", { class: "pname" }, step.step, el("span", { class: "muted" }, ` ${number(step.entered)} entered`)),
        el(
          "div",
          { class: "stack", title: reasons ? `dropped: ${reasons}` : "" },
          el("span", { class: "seg next", style: `width: ${share(next)}` }),
          el("span", { class: "seg open", style: `width: ${share(step.in_progress)}` }),
          el("span", { class: "seg dropped", style: `width: ${share(step.dropped)}` }),
        ),
        el("div", { class: "small", "data-testid": "progress-text" }, text),
      );
    }),
    el(
      "div",
      { class: "legend small" },
      el("span", { class: "seg next key" }), " reached the next step ",
      el("span", { class: "seg open key" }), " in progress ",
      el("span", { class: "seg dropped key" }), " dropped",
    ),
  );
}

// ---- time to convert --------------------------------------------------------------------

async function refreshTtc() {
  const path = `/funnels/${encodeURIComponent(state.funnel)}/time-to-convert?${params({ window: state.window })}`;
  $("link-ttc").href = path;
  const body = await getJSON(path);
  $("ttc-steps").replaceChildren(...body.steps.map(drawHistogram));
}

function drawHistogram(step) {
  const buckets = step.histogram;
  const lastUsed = Math.max(4, ...buckets.map((b, i) => (b.count ? i : 0)));
  const shown = buckets.slice(0, lastUsed + 1);
  const width = 260;
  const height = 64;
  const most = Math.max(1, ...shown.map((b) => b.count));
  const w = width / shown.length;
  const at = (ms) => {
    // the bucket position of a time, interpolated like the server's quantiles
    let lower = 0;
    for (let i = 0; i < shown.length; i += 1) {
      const upper = shown[i].le_ms;
      if (upper === null || ms <= upper) {
        const part = upper === null ? 0.5 : lower === 0 ? ms / upper : Math.log(ms / lower) / Math.log(upper / lower);
        return (i + Math.max(0, Math.min(1, part))) * w;
      }
      lower = upper;
    }
    return width;
  };
  const chart = svg("svg", { width, height: height + 14, viewBox: `0 0 ${width} ${height + 14}`, class: "hist", "data-testid": "ttc-svg" });
  shown.forEach((b, i) => {
    const h = (b.count / most) * height;
    chart.append(svg("rect", { x: i * w + 1, y: height - h, width: Math.max(1, w - 2), height: h, class: "bucket" }, svg("title", {}, `≤ ${b.le_ms === null ? "∞" : duration(b.le_ms)}: ${b.count}`)));
  });
  for (const [label, ms] of [["median", step.median_ms], ["p90", step.p90_ms]]) {
    if (ms === null) continue;
    const px = at(ms);
    chart.append(svg("line", { x1: px, x2: px, y1: 0, y2: height, class: `q ${label}` }));
  }
  chart.append(svg("text", { x: 0, y: height + 12, class: "axis" }, "0"));
  const top = shown[shown.length - 1].le_ms;
  chart.append(svg("text", { x: width, y: height + 12, class: "axis", "text-anchor": "end" }, top === null ? "more" : duration(top)));
  return el(
    "div",
    { class: "ttc", "data-testid": "ttc-step", "data-step": step.step, "data-conversions": String(step.conversions), "data-median": String(step.median_ms ?? "") },
    el("div", {}, el("strong", {}, step.step), el("span", { class: "muted" }, ` ${number(step.conversions)} reached`)),
    chart,
    el("div", { class: "small" }, el("span", { class: "q-key median" }), ` median ${duration(step.median_ms)} `, el("span", { class: "q-key p90" }), ` p90 ${duration(step.p90_ms)} · mean ${duration(step.mean_ms)}`),
  );
}

// ---- channels, landing pages and audience ------------------------------------------------

// Two tables over GET /channels: channels and landing pages, and the audience (one tab per
// audience field). Each column says its basis (the answer's `bases`): sessions are counted when
// they close, conversions as they happen.
const CHANNEL_LABELS = {
  channel: "channel",
  landing_page: "landing page",
  "audience.device": "device",
  "audience.browser": "browser",
  "audience.os": "OS",
  "audience.country": "country",
  "audience.language": "language",
  avg_session_duration_ms: "avg. session",
  pages_per_session: "pages / session",
  bounce_rate: "bounce rate",
  visitor_type: "visitors",
  sessions: "sessions",
  converting_sessions: "converting",
  conversion_rate: "conv. rate",
  conversions: "conversions",
  value: "value",
  avg_decision_time_ms: "decision time",
  microconversions: "micro",
  micro_macro_ratio: "micro/macro",
};
const AUDIENCE_COLUMNS = [
  "sessions",
  "converting_sessions",
  "conversion_rate",
  "conversions",
  "value",
  "avg_session_duration_ms",
  "pages_per_session",
  "bounce_rate",
];
const BY_DIMENSION = "dimension"; // a table sorted by its first column, whichever dimension it shows

function channelCell(column, value) {
  if (value === null || value === undefined) return "–";
  if (column === "conversion_rate" || column === "bounce_rate") return rate(value);
  if (column === "avg_decision_time_ms" || column === "avg_session_duration_ms") return duration(value);
  if (column === "pages_per_session" || column === "micro_macro_ratio") return value.toFixed(1);
  if (column === "value") return number(Math.round(value));
  if (typeof value === "number") return number(value);
  return value === "" ? "(none)" : value;
}

// Each basis gets a mark (1, 2...) on its columns' headers and a line in the legend below.
function basisMarks(bases) {
  const marks = {};
  Object.entries(bases).forEach(([basis, columns], i) => {
    for (const column of columns) marks[column] = { mark: String(i + 1), basis, index: i };
  });
  return marks;
}

function renderBases(id, bases, shown) {
  $(id).replaceChildren(
    ...Object.entries(bases).map(([basis, columns], i) => {
      const here = columns.filter((c) => shown.includes(c)).map((c) => CHANNEL_LABELS[c] || c);
      return el(
        "li",
        { "data-testid": "basis", "data-basis": String(i + 1) },
        el("sup", { class: `basis basis-${i}` }, String(i + 1)),
        ` ${basis}: ${here.join(", ")}`,
      );
    }),
  );
}

const tables = {
  channels: {
    table: "channel-table",
    bases: "channel-bases",
    row: "channel-row",
    dim: () => $("channel-dim").value,
    goal: "channel-goal",
    split: () => $("channel-split").checked,
    columns: null, // all of the answer's
    sort: "sessions",
    order: "desc",
  },
  audience: {
    table: "audience-table",
    bases: "audience-bases",
    row: "audience-row",
    dim: () => document.querySelector("#audience-tabs [aria-selected=true]").dataset.dim,
    goal: "audience-goal",
    split: () => false,
    columns: AUDIENCE_COLUMNS,
    sort: "sessions",
    order: "desc",
  },
};

async function refreshTable(spec, live) {
  const goals = Object.keys(live.goals.goals);
  const goal = $(spec.goal).value || goals[0] || "";
  fillSelect($(spec.goal), goals, goal);
  const dim = spec.dim();
  const sort = spec.sort === BY_DIMENSION ? dim : spec.sort;
  const query = { window: state.window, dimension: dim, goal, split: spec.split() ? "visitor_type" : "", sort, order: spec.order, limit: 50 };
  const body = await getJSON(`/channels?${params(query)}`);
  const columns = spec.columns ? [dim, ...spec.columns] : body.columns;
  const marks = basisMarks(body.bases);
  const head = el(
    "tr",
    {},
    ...columns.map((column) => {
      const basis = marks[column];
      return el(
        "th",
        {
          "data-sort": column,
          "data-basis": basis ? basis.mark : "",
          "aria-sort": column === body.sort ? (body.order === "asc" ? "ascending" : "descending") : "none",
          class: column === body.sort ? `sorted ${body.order}` : "",
          title: basis ? `sort · ${basis.basis}` : "sort",
        },
        CHANNEL_LABELS[column] || column,
        basis ? el("sup", { class: `basis basis-${basis.index}` }, basis.mark) : "",
      );
    }),
  );
  const rows = body.rows.map((row) =>
    el(
      "tr",
      { "data-testid": spec.row, "data-value": row[dim] },
      ...columns.map((c) => el("td", { "data-column": c, title: String(row[c] ?? "") }, channelCell(c, row[c]))),
    ),
  );
  const totals = Object.entries(body.totals).map(([who, row]) =>
    el("tr", { class: "total" }, ...columns.map((c, i) => el("td", {}, i === 0 ? `total${who === "all" ? "" : ` ${who}`}` : c === "visitor_type" ? who : channelCell(c, row[c])))),
  );
  $(spec.table).replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows), el("tfoot", {}, ...totals));
  renderBases(spec.bases, body.bases, columns);
}

for (const spec of Object.values(tables)) {
  $(spec.table).addEventListener("click", (event) => {
    const th = event.target.closest("th[data-sort]");
    if (!th || th.dataset.sort === "visitor_type") return; // the split is not a sort order
    const column = th.dataset.sort === spec.dim() ? BY_DIMENSION : th.dataset.sort;
    if (spec.sort === column) {
      spec.order = spec.order === "desc" ? "asc" : "desc";
    } else {
      spec.sort = column;
      spec.order = column === BY_DIMENSION ? "asc" : "desc";
    }
    tick(true);
  });
  $(spec.goal).addEventListener("change", () => tick(true));
}
for (const id of ["channel-dim", "channel-split"]) $(id).addEventListener("change", () => tick(true));
$("audience-tabs").addEventListener("click", (event) => {
  const tab = event.target.closest("button[data-dim]");
  if (!tab) return;
  for (const other of $("audience-tabs").querySelectorAll("button")) other.setAttribute("aria-selected", String(other === tab));
  tick(true);
});
$("trend-step").addEventListener("change", (event) => {
  panels.step = event.target.value;
  panels.valueChosen = false;
  panels.value = null;
  tick(true);
});
$("trend-value").addEventListener("change", (event) => {
  panels.value = event.target.value;
  panels.valueChosen = true;
  tick(true);
});

// ---- experiments ------------------------------------------------------------------------

async function refreshExperiments() {
  const body = await getJSON("/experiments");
  const section = document.querySelector("[data-testid=experiments]");
  section.hidden = body.experiments.length === 0;
  $("experiment-list").replaceChildren(
    ...body.experiments.map((e) => {
      const rows = e.variants.map((v) =>
        el(
          "tr",
          { "data-testid": "experiment-variant", "data-variant": v.variant, "data-decision": v.decision, "data-entered": String(v.entered) },
          el("td", {}, v.variant),
          el("td", {}, number(v.entered)),
          el("td", {}, number(v.converted)),
          el("td", {}, `${rate(v.rate)} (${rate(v.rate_low)}–${rate(v.rate_high)})`),
          el("td", {}, v.lift === null || v.lift === undefined ? "–" : `${(v.lift * 100).toFixed(1)}%`),
          el("td", {}, v.difference === null || v.difference === undefined ? "–" : `${rate(v.difference_low)} to ${rate(v.difference_high)}`),
          el("td", {}, v.p_value === null || v.p_value === undefined ? "–" : v.p_value.toFixed(3)),
          el("td", { class: `decision ${v.decision}` }, v.decision),
        ),
      );
      return el(
        "div",
        { class: "experiment", "data-testid": "experiment", "data-name": e.name },
        el("h3", {}, `${e.name} `, el("span", { class: "muted" }, `${e.funnel}: entry → ${e.step}, ${e.variant_field}, control ${e.control}, α ${e.alpha}`)),
        e.variants.length
          ? el(
              "div",
              { class: "scroll" },
              el(
                "table",
                {},
                el("thead", {}, el("tr", {}, ...["variant", "entered", "converted", "rate (interval)", "lift", "difference (always valid)", "p (always valid)", "decision"].map((h) => el("th", {}, h)))),
                el("tbody", {}, ...rows),
              ),
            )
          : el("p", { class: "muted" }, "waiting for its first attempts"),
      );
    }),
  );
}

// ---- all of them ------------------------------------------------------------------------

async function refreshPanels(live) {
  const jobs = [
    ["trend-chart", refreshTrend(live)],
    ["progress-steps", refreshProgress()],
    ["ttc-steps", refreshTtc()],
    ["channel-table", refreshTable(tables.channels, live)],
    ["audience-table", refreshTable(tables.audience, live)],
    ["experiment-list", refreshExperiments()],
  ];
  await Promise.all(jobs.map(([id, job]) => job.catch((error) => panelError(id, error))));
}
