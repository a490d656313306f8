// The live dashboard: polls /live and redraws. Plain DOM, no build step. Every value from the
// counters (breakdown values come from clients' events) is set as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);
const state = { funnel: null, window: "15m", by: "", version: "" }; // version "": the current one
let failures = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the CSP, an attribute is not
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

const number = (n) => (n ?? 0).toLocaleString("en-US");
const percent = (r) => (r === null || r === undefined ? "–" : `${(r * 100).toFixed(1)}%`);
const moment = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");
const duration = (ms) => {
  if (ms === null || ms === undefined) return "–";
  if (ms < 60000) return `${(ms / 1000).toFixed(0)} s`;
  const minutes = ms / 60000;
  if (minutes < 60) return `${minutes.toFixed(1)} min`;
  if (minutes < 2880) return `${(minutes / 60).toFixed(1)} h`;
  return `${(minutes / 1440).toFixed(1)} d`;
};

function fillSelect(select, values, chosen, labels) {
  const current = [...select.options].map((o) => o.value).join("\u0000");
  if (current !== values.join("\u0000")) {
    select.replaceChildren(...values.map((v, i) => el("option", { value: v }, labels ? labels[i] : v)));
  }
  select.value = chosen;
}

function renderSteps(report, alerting) {
  const first = report.steps.length ? report.steps[0].entered : 0;
  $("steps").replaceChildren(
    ...report.steps.map((step, i) => {
      const width = first ? (100 * step.entered) / first : 0;
      const rate = i === 0 ? null : step.rate_from_previous;
      return el(
        "div",
        { class: "step", "data-testid": "step", "data-step": step.name, "data-entered": String(step.entered) },
        el("span", { class: "name" }, step.name),
        el(
          "div",
          { class: "track" },
          el("div", { class: "fill", style: `width: ${width.toFixed(2)}%` }),
          el("span", { class: "label", "data-testid": "step-count" }, number(step.entered)),
        ),
        el(
          "span",
          { class: "numbers" },
          `${number(step.unique_users)} users · `,
          el("span", { class: "rate" + (alerting.has(step.name) ? " low" : "") }, i === 0 ? "start" : `${percent(rate)} of previous`),
          ` · ${number(step.dropped)} dropped`,
        ),
      );
    }),
  );
}

function renderBreakdown(report) {
  const holder = $("breakdown");
  if (!report.by) {
    holder.replaceChildren();
    return;
  }
  const names = report.steps.map((s) => s.name);
  // the top values (at most CONVERSIONS_BREAKDOWN_CAP), largest first, then "(other)": the rest
  const last = (entry) => (entry[0] === "(other)" ? 1 : 0);
  const rows = Object.entries(report.breakdown).sort(
    (a, b) => last(a) - last(b) || (b[1][0]?.entered ?? 0) - (a[1][0]?.entered ?? 0),
  );
  holder.replaceChildren(
    el(
      "table",
      { "data-testid": "breakdown-table" },
      el("thead", {}, el("tr", {}, el("th", {}, report.by), ...names.map((n) => el("th", {}, n)), el("th", {}, "overall"))),
      el(
        "tbody",
        {},
        ...rows.map(([value, steps]) => {
          const last = steps[steps.length - 1];
          return el(
            "tr",
            { "data-value": value },
            el("td", {}, value === "" ? "(none)" : value),
            ...steps.map((s) => el("td", {}, number(s.entered))),
            el("td", {}, percent(last ? last.rate_overall : null)),
          );
        }),
      ),
    ),
  );
}

function renderGoals(goals) {
  const tiles = Object.entries(goals.goals).map(([name, g]) =>
    el(
      "div",
      { class: "tile", "data-testid": "goal", "data-goal": name },
      el("div", { class: "muted" }, name),
      el("div", { class: "big" }, number(g.count)),
      el("div", {}, `${number(g.unique_users)} users · value ${number(Math.round(g.value))}`),
      el("div", { class: "muted" }, `decision time ${duration(g.avg_decision_time_ms)}`),
    ),
  );
  tiles.push(
    el(
      "div",
      { class: "tile" },
      el("div", { class: "muted" }, "micro / macro"),
      el("div", { class: "big" }, goals.micro_macro_ratio === null ? "–" : goals.micro_macro_ratio.toFixed(1)),
      el("div", {}, `${number(goals.microconversions)} microconversions`),
      el("div", { class: "muted" }, `${number(goals.sessions.count)} ${goals.sessions.count === 1 ? "session" : "sessions"} closed`),
    ),
  );
  $("goals").replaceChildren(...tiles);
}

function alertText(a) {
  const by = Object.entries(a.by).map(([k, v]) => `${k}=${v}`).join(", ");
  const baseline = a.baseline_rate === null ? "" : ` vs ${percent(a.baseline_rate)} baseline`;
  const judged = a.method === "cusum" && a.trials !== null && a.trials !== undefined
    ? `${number(a.trials)} attempts, ${number(a.failures)} failed, cusum ${a.statistic.toFixed(2)} ≥ ${a.threshold.toFixed(2)}`
    : `${number(a.entered)} entered, window ${a.window}`;
  const cause = a.root_cause ? ` · root cause: ${a.root_cause.summary}` : "";
  return `${a.funnel}: ${a.step}${by ? ` [${by}]` : ""} at ${percent(a.rate)}${baseline} (${judged}) since ${a.timestamp}${cause}`;
}

function renderAlerts(alerts) {
  $("firing").replaceChildren(...alerts.firing.map((a) => el("li", { "data-testid": "firing-alert" }, "FIRING ", alertText(a))));
  $("no-alerts").hidden = alerts.firing.length > 0;
  $("no-alerts").textContent = `No alert is firing (${alerts.rules} rules watched).`;
  $("alert-history").replaceChildren(...alerts.recent.map((a) => el("li", { class: a.state }, `${a.state} · `, alertText(a))));
}

function renderRecent(macros) {
  $("recent").replaceChildren(
    ...macros.slice(0, 12).map((m) =>
      el(
        "li",
        { "data-testid": "recent-macro" },
        `${m.timestamp.slice(11, 19)} ${m.goal}`,
        m.value === null || m.value === undefined ? "" : ` ${m.value} ${m.currency ?? ""}`,
        el("span", { class: "muted" }, ` via ${m.channel ?? "?"} from ${m.landing_page ?? "?"} after ${duration(m.decision_time_ms)}`),
      ),
    ),
  );
}

// The funnel's definition version (issue 25): the current one, and any earlier one whose counters
// have not expired yet (`versions`, newest first), which GET /funnels/<name>?version= reads.
function versionChoices(report) {
  const others = Object.keys(report.versions || {}).filter((v) => v !== report.version);
  return report.version ? [report.version, ...others] : others;
}

async function chooseVersion(funnel, query) {
  const choices = versionChoices(funnel);
  if (!choices.includes(state.version) || state.version === funnel.version) state.version = "";
  const labels = choices.map((v, i) => {
    if (i === 0) return `${v} (current)`;
    const last = funnel.versions[v];
    return `${v} (${i === 1 ? "previous" : "older"}, counted until ${moment(last)})`;
  });
  fillSelect($("version"), choices, state.version || funnel.version, labels);
  $("version-choice").hidden = choices.length < 2;
  $("funnel-version").textContent = funnel.version ? `version ${funnel.version}` : "";
  const note = $("version-note");
  if (!state.version) {
    note.hidden = true;
    return funnel;
  }
  const older = new URLSearchParams(query);
  older.delete("funnel");
  older.set("version", state.version);
  const response = await fetch(`/funnels/${encodeURIComponent(state.funnel)}?${older}`, { cache: "no-store" });
  const report = await response.json();
  if (!response.ok) {
    // its counters expired since the list was read: back to the current version, saying why
    note.hidden = false;
    note.textContent = `Version ${state.version} cannot be shown (${report.error || response.statusText}); showing the current one.`;
    state.version = "";
    $("version").value = funnel.version;
    return funnel;
  }
  note.hidden = false;
  note.textContent =
    `Showing the earlier version ${state.version}, not the current ${funnel.version}: its own counts, ` +
    "kept until its counters expire; its steps are numbered #k (k from 0) since the current " +
    "definition may not have them.";
  return report;
}

async function refresh() {
  const params = new URLSearchParams({ window: state.window });
  if (state.funnel) params.set("funnel", state.funnel);
  if (state.by) params.set("by", state.by);
  try {
    const response = await fetch(`/live?${params}`, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    const names = Object.keys(body.funnels);
    if (!state.funnel || !names.includes(state.funnel)) state.funnel = names[0];
    fillSelect($("funnel"), names, state.funnel);
    const funnel = body.funnels[state.funnel];
    if (!funnel.breakdowns.includes(state.by)) state.by = "";
    fillSelect($("by"), ["", ...funnel.breakdowns], state.by, ["none", ...funnel.breakdowns]);
    $("funnel-title").textContent = `Funnel ${state.funnel}`;
    $("window-label").textContent = `${moment(body.start_ms)} to ${moment(body.end_ms)} (event time)`;
    const shown = await chooseVersion(funnel, params);
    const alerting = new Set(body.alerts.firing.filter((a) => a.funnel === state.funnel).map((a) => a.step));
    renderSteps(shown, shown === funnel ? alerting : new Set());
    renderBreakdown(shown);
    renderGoals(body.goals);
    renderAlerts(body.alerts);
    renderRecent(body.recent_macros);
    if (typeof refreshPanels === "function") await refreshPanels(body);
    failures = 0;
    $("status").classList.remove("stale");
    $("status").textContent = `latest event ${moment(body.latest_event_ms)} · updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    failures += 1;
    $("status").classList.add("stale");
    $("status").textContent = `cannot reach the worker (${error.message}); retrying`;
  }
}

$("controls").addEventListener("submit", (event) => event.preventDefault());
for (const [id, key] of [["funnel", "funnel"], ["range", "window"], ["by", "by"], ["version", "version"]]) {
  $(id).addEventListener("change", (event) => {
    state[key] = event.target.value;
    if (key === "funnel") {
      state.by = "";
      state.version = "";
    }
    tick(true);
  });
}
let refreshing = null;
let again = false;
function tick(changed) {
  // one refresh at a time: a slow answer must not pile requests up behind it; a change made
  // meanwhile is shown right after it
  if (refreshing) {
    again = again || Boolean(changed);
    return refreshing;
  }
  refreshing = refresh().finally(() => {
    refreshing = null;
    if (again) {
      again = false;
      tick();
    }
  });
  return refreshing;
}
window.addEventListener("load", () => {
  tick();
  setInterval(() => tick(), REFRESH_MS);
});
