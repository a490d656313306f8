// The reprocessing panel (issue 26): a configuration deployed with `conversions deploy` is a new
// generation that replays the retained clickstream while the current one keeps serving this page.
// GET /generations carries its progress as `deploy` last wrote it (every 2 s): the event time it
// has counted up to against the current generation's, the records it has not processed yet, and
// the time left at the recent rate. Hidden while nothing reprocesses; once a generation is cut
// over it says when, for CUT_OVER_SHOWN_MS. Uses dashboard.js's helpers; values set as text.
"use strict";

const CUT_OVER_SHOWN_MS = 15 * 60 * 1000;
const widestLag = new Map(); // generation -> the largest lag this page saw: the bar's 0 %

const hhmm = (ms) => new Date(ms).toISOString().slice(11, 16);

function showGeneration(attrs, title, text, done) {
  const panel = $("generation");
  panel.hidden = false;
  for (const [key, value] of Object.entries(attrs)) panel.setAttribute(key, String(value));
  $("generation-title").textContent = title;
  $("generation-text").textContent = text;
  $("generation-fill").style.width = `${(100 * done).toFixed(1)}%`;
}

function hideGeneration() {
  const panel = $("generation");
  panel.hidden = true;
  panel.setAttribute("data-state", "none");
}

function renderGeneration(body, now) {
  const reprocessing = body.generations.filter((g) => g.state === "reprocessing");
  if (reprocessing.length) {
    const g = reprocessing[reprocessing.length - 1];
    const p = g.progress || {};
    const lag = p.total_lag ?? null;
    if (lag !== null) widestLag.set(g.number, Math.max(widestLag.get(g.number) || 0, lag));
    const widest = widestLag.get(g.number) || 0;
    const reached = p.event_ms ? `reached ${moment(p.event_ms)}` : "none counted yet";
    const against = p.live_event_ms
      ? ` (generation ${body.current}: ${moment(p.live_event_ms)}` +
        (p.event_ms ? `, ${duration(Math.max(0, p.live_event_ms - p.event_ms))} behind)` : ")")
      : "";
    const left = p.eta_s === null || p.eta_s === undefined ? "time left: measuring" : `about ${duration(p.eta_s * 1000)} left`;
    showGeneration(
      {
        "data-state": "reprocessing",
        "data-number": g.number,
        "data-lag": lag ?? "",
        "data-event-ms": p.event_ms ?? "",
        "data-live-event-ms": p.live_event_ms ?? "",
      },
      `Generation ${g.number} is reprocessing the history`,
      `event time ${reached}${against} · lag ${lag === null ? "–" : number(lag)} records · ${left}. ` +
        `This page answers from generation ${body.current} until it cuts over.`,
      widest > 0 && lag !== null ? 1 - lag / widest : 0,
    );
    return;
  }
  const current = body.generations.find((g) => g.number === body.current);
  if (current && current.number > 0 && current.live_ms && now - current.live_ms < CUT_OVER_SHOWN_MS) {
    showGeneration(
      { "data-state": "cut-over", "data-number": current.number, "data-lag": "", "data-event-ms": "", "data-live-event-ms": "" },
      `Generation ${current.number} is live`,
      `cut over at ${hhmm(current.live_ms)} UTC: this page answers from generation ${current.number}, with its history.`,
      1,
    );
    return;
  }
  hideGeneration();
}

async function refreshGeneration() {
  try {
    const response = await fetch("/generations", { cache: "no-store" });
    if (!response.ok) return; // the other panels say when the worker is unreachable
    renderGeneration(await response.json(), Date.now());
  } catch (error) {
    // unreachable: the status line says so; the panel keeps its last state
  }
}

window.addEventListener("load", () => {
  refreshGeneration();
  setInterval(refreshGeneration, REFRESH_MS);
});
