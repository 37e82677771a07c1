// The dashboard: keeps the latest snapshot of the pool, keeps it fresh, and
// wires the operator's actions to the API.
//
// Freshness: the server pushes a snapshot over server-sent events
// (GET /panel/events) whenever the registry changes. While that stream is down
// (a proxy that does not pass it, a restart, or ?push=0 in the address), the
// page polls GET /panel/snapshot at the interval the operator picked. Both carry
// the same JSON, so there is one rendering path.

import { ApiError, apiKey, request, segment } from './api.js';
import { learnServerTime, now } from './format.js';
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

const state = {
  snapshot: null,
  source: null, // the EventSource while push is on
  live: false, // a snapshot arrived over the event stream since it (re)opened
  polling: null, // the running polling loop: { timer }
  stats: new Map(), // stream id -> { samples, lastFetch, busy }
  detailId: null, // engine shown in the detail dialog
  detailFetched: 0,
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

// ---- snapshots ---------------------------------------------------------------

function apply(snapshot) {
  state.snapshot = snapshot;
  learnServerTime(snapshot.generated_at);
  renderKpis(snapshot);
  renderVpnNodes(snapshot);
  renderEngines(snapshot);
  renderStreams(snapshot, samplesOf);
  refreshStats(snapshot);
  if (state.detailId) refreshDetail(false);
}

function pollSeconds() {
  return Number($('poll-interval').value) || 5;
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
      const snapshot = await request('GET', '/panel/snapshot');
      if (state.polling !== loop) return;
      apply(snapshot);
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

function connect() {
  const pushAllowed = new URLSearchParams(location.search).get('push') !== '0' && 'EventSource' in window;
  if (!pushAllowed) {
    startPolling('live updates are off (push=0 in the address, or no EventSource in this browser)');
    return;
  }
  const source = new EventSource('/panel/events');
  state.source = source;
  source.addEventListener('snapshot', (event) => {
    if (!state.live) {
      state.live = true;
      stopPolling();
      renderConnection('live', 'Live', 'Updates are pushed by the server');
    }
    apply(JSON.parse(event.data));
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

/** Fetches new samples for the active streams (incrementally, with ?since=), forgets ended ones. */
function refreshStats(snapshot) {
  const active = new Set(snapshot.streams.map((s) => s.id));
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
  return state.snapshot?.engines.find((e) => e.container_id === id);
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

function setView(view) {
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
}

wire();
connect();

// For the browser tests and curious operators: the state, read-only by convention.
window.orchestratorPanel = { state, now };
