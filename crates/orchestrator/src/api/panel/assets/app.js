// The dashboard: keeps what it knows of the pool current, and wires the
// operator's actions to the API.
//
// Freshness: the server sends one snapshot over server-sent events
// (GET /panel/events), then deltas, only what changed. When the stream drops,
// the browser reconnects with the last event's id and gets what it missed.
// While the stream is down (a proxy that does not pass it, a restart, or
// ?push=0 in the address), the page polls GET /panel/snapshot?since=VERSION
// with If-None-Match: a 304 when nothing changed, else the deltas.
//
// Drawing: a delta only updates the store and notes what changed; the page is
// redrawn at most once per animation frame, touching only changed map cells
// and the cards of the visible page, so the main thread never blocks long.

import { ApiError, apiKey, request, segment } from './api.js';
import { learnServerTime, now } from './format.js';
import { applyDelta, asSnapshot, createStore, loadSnapshot, streamList } from './store.js';
import { createPool, hoverCell, renderPager, renderPool } from './pool.js';
import {
  engineName, redrawStreamChart, renderConnection, renderDetail, renderEngines, renderKpis,
  renderStreams, renderVpnNodes, tickTimes, toast,
} from './view.js';

const $ = (id) => document.getElementById(id);
const PREFERENCES = { view: 'orchestrator.view', poll: 'orchestrator.pollSeconds' };
// A stream's statistics are fetched at most this often; the collector adds a
// sample every few seconds.
const STATS_EVERY_MS = 3000;
// As many samples as the orchestrator keeps by default (STATS_HISTORY_MAX).
const STATS_KEPT = 720;
// Detailed cards (or rows) per page, and streams per page.
const ENGINES_PER_PAGE = { cards: 24, rows: 50 };
const STREAMS_PER_PAGE = 10;

// Main-thread tasks over 50 ms, as the browser reports them, for the browser
// tests and curious operators (window.orchestratorPanel.longTasks).
const longTasks = [];
try {
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) longTasks.push({ start: entry.startTime, duration: entry.duration });
  }).observe({ type: 'longtask', buffered: true });
} catch {
  // Not supported: nothing to record.
}

const state = {
  store: createStore(),
  pool: createPool({ pageSize: ENGINES_PER_PAGE.cards }),
  streamPage: 0,
  streamSearch: '',
  source: null, // the EventSource while push is on
  live: false, // a snapshot or delta arrived over the event stream since it (re)opened
  polling: null, // the running polling loop: { timer }
  stats: new Map(), // stream id -> { samples, lastFetch, busy }
  visibleStreams: [], // the streams on the current page, whose charts are fed
  detailId: null, // engine shown in the detail dialog
  detailFetched: 0,
  frame: 0, // the requested animation frame, 0 when none
  redrawAll: true, // filters or the page changed: every cell and card
  firstRender: null, // ms after navigation when the first snapshot was drawn
  // ms after navigation: the first snapshot arrived; the first draw began.
  timing: { snapshotArrived: null, drawStarted: null },
  events: 0, // snapshots and deltas taken in
};

function preference(name, fallback) {
  try {
    return localStorage.getItem(PREFERENCES[name]) ?? fallback;
  } catch {
    return fallback;
  }
}

function savePreference(name, value) {
  try {
    localStorage.setItem(PREFERENCES[name], value);
  } catch {
    // Storage disabled: the choice lasts until the page is closed.
  }
}

// ---- the store and drawing ------------------------------------------------------

function takeSnapshot(snapshot) {
  loadSnapshot(state.store, snapshot);
  state.events += 1;
  state.redrawAll = true;
  schedule();
}

function takeDelta(delta) {
  applyDelta(state.store, delta);
  state.events += 1;
  schedule();
}

/** Draws at the next animation frame (once, however many deltas arrive before it). */
function schedule() {
  if (!state.frame) state.frame = requestAnimationFrame(draw);
}

function draw() {
  state.frame = 0;
  const store = state.store;
  if (!store.generatedAt) return;
  learnServerTime(store.generatedAt);
  const all = state.redrawAll;
  state.redrawAll = false;
  if (state.timing.drawStarted === null) state.timing.drawStarted = performance.now();
  const streamsChanged = store.changed.streams || all;
  renderKpis(store);
  if (store.changed.nodes || all) renderVpnNodes(store);
  store.changed.nodes = false;
  renderEngines(renderPool(state.pool, store, all), store);
  if (streamsChanged) drawStreams();
  store.changed.streams = false;
  if (state.detailId) refreshDetail(false);
  if (state.firstRender === null) {
    state.firstRender = performance.now();
    document.body.dataset.rendered = 'true';
  }
}

function drawStreams() {
  const query = state.streamSearch;
  const engines = state.store.engines;
  const all = streamList(state.store);
  const list = query
    ? all.filter((s) => `${s.id} ${s.key} ${s.container_id} ${engines.has(s.container_id) ? engineName(engines.get(s.container_id)) : ''}`
      .toLowerCase().includes(query))
    : all;
  const pages = Math.max(1, Math.ceil(list.length / STREAMS_PER_PAGE));
  state.streamPage = Math.min(state.streamPage, pages - 1);
  const start = state.streamPage * STREAMS_PER_PAGE;
  const visible = list.slice(start, start + STREAMS_PER_PAGE);
  renderStreams(visible, state.store, samplesOf);
  renderPager($('streams-pager'), state.streamPage, pages);
  const shown = all.length && list.length !== all.length ? `${list.length} of ${all.length} streams match` : '';
  $('streams-shown').textContent = all.length && !list.length ? 'No stream matches the search.' : shown;
  $('stream-tools').hidden = all.length <= STREAMS_PER_PAGE && !query;
  state.visibleStreams = visible;
  refreshStats(visible);
}

function pollSeconds() {
  return Number($('poll-interval').value) || 5;
}

/** One poll: only what changed since the version the page has. */
async function pollOnce() {
  const version = state.store.version;
  const headers = { Accept: 'application/json' };
  if (version) headers['If-None-Match'] = `"${version}"`;
  const path = version ? `/panel/snapshot?since=${encodeURIComponent(version)}` : '/panel/snapshot';
  let response;
  try {
    response = await fetch(path, { headers, cache: 'no-store' });
  } catch (error) {
    throw new ApiError(0, `the orchestrator did not answer (${error.message})`);
  }
  if (response.status === 304) return;
  if (!response.ok) throw new ApiError(response.status, `HTTP ${response.status}`);
  const answer = await response.json();
  if (Array.isArray(answer.deltas)) for (const delta of answer.deltas) takeDelta(delta);
  else takeSnapshot(answer);
}

/** Starts polling unless it already runs. */
function startPolling(reason) {
  if (state.polling) return;
  // Each loop has its own identity, so a loop whose request is still in
  // flight when polling stops (or restarts) does not schedule itself again.
  const loop = { timer: null };
  state.polling = loop;
  const label = () => `Polling every ${pollSeconds()} s`;
  renderConnection('polling', label(), reason);
  const poll = async () => {
    try {
      if (state.polling !== loop) return;
      await pollOnce();
      if (state.polling !== loop) return;
      renderConnection('polling', label(), reason);
    } catch (error) {
      if (state.polling === loop) renderConnection('offline', 'Offline', error.message);
    }
    if (state.polling === loop) loop.timer = setTimeout(poll, pollSeconds() * 1000);
  };
  loop.timer = setTimeout(poll, 0);
}

function stopPolling() {
  if (state.polling) clearTimeout(state.polling.timer);
  state.polling = null;
}

/** Versions are "<server run>-<number>": is `version` at or before the page's? */
function isApplied(version) {
  const [run, number] = String(version).split('-');
  const [haveRun, haveNumber] = String(state.store.version).split('-');
  return run === haveRun && Number(number) <= Number(haveNumber);
}

function connect() {
  const pushAllowed = new URLSearchParams(location.search).get('push') !== '0' && 'EventSource' in window;
  if (!pushAllowed) {
    startPolling('live updates are off (push=0 in the address, or no EventSource in this browser)');
    return;
  }
  const source = new EventSource('/panel/events');
  state.source = source;
  const goLive = () => {
    if (state.live) return;
    state.live = true;
    stopPolling();
    renderConnection('live', 'Live', 'Updates are pushed by the server');
  };
  source.addEventListener('snapshot', (event) => {
    goLive();
    if (state.timing.snapshotArrived === null) state.timing.snapshotArrived = performance.now();
    takeSnapshot(JSON.parse(event.data));
  });
  source.addEventListener('delta', (event) => {
    goLive();
    const delta = JSON.parse(event.data);
    // A poll may have brought the page past this delta while the stream was
    // down; the server resumes after the stream's own last id, so skip what
    // is already applied.
    if (!isApplied(delta.version)) takeDelta(delta);
  });
  source.addEventListener('failure', (event) => toast(`Server: ${event.data}`, 'error'));
  source.addEventListener('error', () => {
    // The browser reconnects by itself while readyState is CONNECTING; poll meanwhile.
    state.live = false;
    startPolling('the live event stream is interrupted; reconnecting');
    if (source.readyState === EventSource.CLOSED) {
      // A refused stream is not retried by the browser: try again later.
      state.source = null;
      setTimeout(connect, pollSeconds() * 1000);
    }
  });
}

// ---- stream statistics -----------------------------------------------------

function samplesOf(streamId) {
  return state.stats.get(streamId)?.samples ?? [];
}

/** Fetches new samples for the visible streams (incrementally, with ?since=), forgets others. */
function refreshStats(visible) {
  const active = new Set(visible.map((s) => s.id));
  for (const id of state.stats.keys()) if (!active.has(id)) state.stats.delete(id);
  for (const id of active) {
    let entry = state.stats.get(id);
    if (!entry) {
      entry = { samples: [], lastFetch: 0, busy: false };
      state.stats.set(id, entry);
    }
    if (entry.busy || Date.now() - entry.lastFetch < STATS_EVERY_MS) continue;
    entry.busy = true;
    entry.lastFetch = Date.now();
    const last = entry.samples[entry.samples.length - 1];
    const query = last ? `?since=${encodeURIComponent(last.ts)}` : '';
    request('GET', `/streams/${segment(id)}/stats${query}`)
      .then((fresh) => {
        if (!fresh.length) return;
        entry.samples = entry.samples.concat(fresh).slice(-STATS_KEPT);
        redrawStreamChart(id, entry.samples);
      })
      .catch(() => {
        // The stream ended meanwhile; the next snapshot drops it.
      })
      .finally(() => {
        entry.busy = false;
      });
  }
}

// ---- engine detail -----------------------------------------------------------

function engineById(id) {
  return state.store.engines.get(id);
}

async function refreshDetail(force) {
  const id = state.detailId;
  // While open, the detail follows the snapshots, at most every 2 s.
  if (!force && Date.now() - state.detailFetched < 2000) return;
  state.detailFetched = Date.now();
  try {
    const history = await request('GET', `/engines/${segment(id)}/health`);
    if (state.detailId === id) renderDetail(engineById(id), history);
  } catch (error) {
    if (state.detailId === id) {
      toast(`${id}: ${error.message}`, 'error');
      if (error.status === 404) $('detail').close();
    }
  }
}

function openDetail(id) {
  state.detailId = id;
  renderDetail(engineById(id), {
    container_id: id, health_status: engineById(id)?.health_status ?? 'unknown',
    consecutive_failures: 0, transitions: [], checks: [],
  });
  $('detail').showModal();
  refreshDetail(true);
}

// ---- actions -------------------------------------------------------------------

/** Asks in a modal dialog; answers true when the operator confirms. */
function confirmAction(title, message, confirmLabel) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-message').textContent = message;
  $('confirm-ok').textContent = confirmLabel;
  return new Promise((resolve) => {
    const done = () => {
      dialog.removeEventListener('close', done);
      resolve(dialog.returnValue === 'ok');
    };
    dialog.returnValue = '';
    dialog.addEventListener('close', done);
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

/** Runs an action with its button disabled, and says how it went. */
async function act(button, busyLabel, action) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = busyLabel;
  try {
    toast(await action());
  } catch (error) {
    let message = error.message;
    if (error instanceof ApiError && error.status === 401) {
      message += ' — enter the API key at the top of the page';
    }
    toast(error.status ? `${message} (HTTP ${error.status})` : message, 'error');
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

async function checkEngine(button, id) {
  await act(button, 'Checking…', async () => {
    const answer = await request('POST', `/engines/${segment(id)}/health/check`);
    const name = engineName(answer.engine);
    return answer.check.ok
      ? `${name}: healthy (${Math.round(answer.check.latency_ms)} ms)`
      : `${name}: check failed: ${answer.check.error}`;
  });
}

async function deleteEngine(button, id) {
  const engine = engineById(id);
  const name = engine ? engineName(engine) : id;
  const streams = engine?.streams.length ?? 0;
  const consequence = streams ? ` Its ${streams} active stream${streams > 1 ? 's' : ''} will end.` : '';
  if (!(await confirmAction('Delete engine?', `Delete ${name} (${id}) from the orchestrator?${consequence}`, 'Delete'))) return;
  await act(button, 'Deleting…', async () => {
    await request('DELETE', `/engines/${segment(id)}`);
    return `${name} deleted`;
  });
}

async function stopStream(button, id) {
  if (!(await confirmAction('Stop stream?', `Stop stream ${id}? Its viewers lose the picture.`, 'Stop'))) return;
  await act(button, 'Stopping…', async () => {
    const answer = await request('DELETE', `/streams/${segment(id)}`);
    return `Stream stopped (engine said: ${answer.engine_stop})`;
  });
}

/** Copies a proxied stream's player (or HLS) URL; where the clipboard is not
 * available (plain http from another machine), selects the text for Ctrl+C. */
async function copyPlayerUrl(card, selector = '.player-url', what = 'Player URL') {
  const code = card.querySelector(selector);
  try {
    await navigator.clipboard.writeText(code.textContent);
    toast(`${what} copied`);
  } catch {
    getSelection().selectAllChildren(code);
    toast(`${what} selected: press Ctrl+C to copy it`);
  }
}

async function checkAll(button) {
  await act(button, 'Checking…', async () => {
    const report = await request('POST', '/health/check');
    return `Checked ${report.checked}: ${report.healthy} healthy, ${report.unhealthy} unhealthy, ${report.unknown} unknown`;
  });
}

async function provision(button) {
  await act(button, 'Provisioning…', async () => {
    const answer = await request('POST', '/provision/acestream', {});
    const name = answer.container_name || answer.container_id;
    return `Provisioned ${name} on port ${answer.host_http_port}`;
  });
}

// ---- wiring --------------------------------------------------------------------

/** Search, health and node filters, the pagers, and the map's cells. */
function wireFilters() {
  const redraw = () => {
    state.redrawAll = true;
    schedule();
  };
  const search = $('engine-search');
  search.addEventListener('input', () => {
    state.pool.search = search.value.trim().toLowerCase();
    state.pool.page = 0;
    redraw();
  });
  for (const button of document.querySelectorAll('#health-filter [data-health]')) {
    button.addEventListener('click', () => {
      state.pool.health = button.dataset.health;
      state.pool.page = 0;
      for (const other of document.querySelectorAll('#health-filter [data-health]')) {
        other.setAttribute('aria-pressed', String(other === button));
      }
      redraw();
    });
  }
  $('group-filter').addEventListener('change', (event) => {
    state.pool.group = event.target.value;
    state.pool.page = 0;
    redraw();
  });
  $('engines-pager').addEventListener('click', (event) => {
    const step = event.target.closest('[data-page]')?.dataset.page;
    if (!step) return;
    state.pool.page = Math.max(0, state.pool.page + (step === 'next' ? 1 : -1));
    redraw();
  });
  $('streams-pager').addEventListener('click', (event) => {
    const step = event.target.closest('[data-page]')?.dataset.page;
    if (!step) return;
    state.streamPage = Math.max(0, state.streamPage + (step === 'next' ? 1 : -1));
    redraw();
  });
  const streamSearch = $('stream-search');
  streamSearch.addEventListener('input', () => {
    state.streamSearch = streamSearch.value.trim().toLowerCase();
    state.streamPage = 0;
    redraw();
  });
  // A cell of the map says what it is when hovered, and opens its engine's detail.
  $('pool-map').addEventListener('mouseover', (event) => {
    if (event.target.classList.contains('cell')) hoverCell(event.target, state.store);
  });
  $('pool-map').addEventListener('click', (event) => {
    const cell = event.target.closest('.cell');
    if (cell) openDetail(cell.dataset.id);
  });
}

function setView(view) {
  state.pool.pageSize = ENGINES_PER_PAGE[view] ?? ENGINES_PER_PAGE.cards;
  state.redrawAll = true;
  schedule();
  $('engines').classList.toggle('rows', view === 'rows');
  $('engines').classList.toggle('cards', view !== 'rows');
  for (const button of document.querySelectorAll('[data-view]')) {
    button.setAttribute('aria-pressed', String(button.dataset.view === view));
  }
  savePreference('view', view);
}

function wire() {
  const keyInput = $('api-key');
  keyInput.value = apiKey.get();
  keyInput.addEventListener('input', () => apiKey.set(keyInput.value.trim()));

  const poll = $('poll-interval');
  poll.value = preference('poll', '5');
  if (!poll.value) poll.value = '5';
  poll.addEventListener('change', () => {
    savePreference('poll', poll.value);
    if (state.polling) {
      stopPolling();
      startPolling('the live event stream is unavailable');
    }
  });

  setView(preference('view', 'cards'));
  for (const button of document.querySelectorAll('[data-view]')) {
    button.addEventListener('click', () => setView(button.dataset.view));
  }

  wireFilters();
  $('check-all').addEventListener('click', (event) => checkAll(event.currentTarget));
  $('provision').addEventListener('click', (event) => provision(event.currentTarget));

  $('engines').addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    const card = event.target.closest('.engine');
    if (!button || !card) return;
    const id = card.dataset.id;
    if (button.dataset.action === 'details') openDetail(id);
    else if (button.dataset.action === 'check') checkEngine(button, id);
    else if (button.dataset.action === 'delete') deleteEngine(button, id);
  });
  $('streams').addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    if (button.dataset.action === 'stop') stopStream(button, button.closest('.stream').dataset.id);
    else if (button.dataset.action === 'copy') copyPlayerUrl(button.closest('.stream'));
    else if (button.dataset.action === 'copy-hls') copyPlayerUrl(button.closest('.stream'), '.hls-url', 'HLS URL');
  });

  $('detail').addEventListener('close', () => {
    state.detailId = null;
  });
  $('detail').querySelector('[data-close]').addEventListener('click', () => $('detail').close());
  $('confirm-cancel').addEventListener('click', () => $('confirm').close('cancel'));
  $('confirm-ok').addEventListener('click', () => $('confirm').close('ok'));

  // "ago" texts age between snapshots.
  setInterval(tickTimes, 1000);
  // A stream's statistics are not in the feed: with deltas, a stream whose
  // record does not change is not redrawn, so its chart is fed on a timer
  // (refreshStats itself keeps to STATS_EVERY_MS per stream).
  setInterval(() => refreshStats(state.visibleStreams), 1000);
}

wire();
connect();

// For the browser tests and curious operators: the state, read-only by convention.
window.orchestratorPanel = { state, now, longTasks, asSnapshot: () => asSnapshot(state.store) };
