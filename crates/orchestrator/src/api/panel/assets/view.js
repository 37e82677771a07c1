// Turns snapshots into the page. Elements are created once per engine and
// stream and then updated in place, so an update never steals the keyboard
// focus or restarts a hover, and buttons keep their busy state.
//
// Times are <time class="ago|since" datetime="…"> elements; tickTimes() keeps
// their text current between snapshots.

import { ago, bytes, clock, duration, fullTime, millis, now, since } from './format.js';
import { createChart, drawChart } from './chart.js';

const $ = (id) => document.getElementById(id);

/** A new element with a class and optional text. */
function el(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

/** A <time> that tickTimes() updates: kind "ago" ("5m ago") or "since" ("3m 05s"). */
function timeEl(kind) {
  return el('time', kind);
}

function setTime(element, ts) {
  element.dateTime = ts || '';
  element.title = fullTime(ts);
  element.textContent = element.classList.contains('since') ? since(ts) : ago(ts);
}

export function tickTimes() {
  const at = now();
  for (const element of document.querySelectorAll('time.ago')) {
    element.textContent = element.dateTime ? ago(element.dateTime, at) : 'Never';
  }
  for (const element of document.querySelectorAll('time.since')) {
    element.textContent = since(element.dateTime, at);
  }
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** Adds, updates and removes keyed children of `container` to match `items`, in order. */
function reconcile(container, items, key, create, update, skip = 0) {
  const existing = new Map();
  for (const child of [...container.children].slice(skip)) existing.set(child.dataset.id, child);
  let previous = container.children[skip - 1] ?? null;
  for (const item of items) {
    const id = key(item);
    let child = existing.get(id);
    if (child) existing.delete(id);
    else child = create(item, id);
    update(child, item);
    const expected = previous ? previous.nextElementSibling : container.firstElementChild;
    if (expected !== child) container.insertBefore(child, expected);
    previous = child;
  }
  for (const stale of existing.values()) stale.remove();
}

import { engineName } from './pool.js';

export { engineName };

// ---- KPIs ------------------------------------------------------------------

export function renderKpis(store) {
  const total = store.engines.size;
  let healthy = 0;
  let unhealthy = 0;
  for (const e of store.engines.values()) {
    if (e.health_status === 'healthy') healthy += 1;
    else if (e.health_status === 'unhealthy') unhealthy += 1;
  }
  setText($('kpi-engines'), String(total));
  setText($('kpi-streams'), String(store.streams.size));
  setText($('kpi-healthy'), `${healthy} / ${total} healthy`);
  $('kpi-health-box').dataset.health = unhealthy > 0 ? 'unhealthy' : healthy === total ? 'healthy' : 'unknown';
  setText($('kpi-updated'), clock(store.generatedAt));
  setTime($('kpi-updated-ago'), store.generatedAt);
}

// ---- engines ---------------------------------------------------------------

function field(label, value) {
  const box = el('div', 'field');
  box.append(el('span', 'label', label), value);
  return box;
}

function createEngine(engine, id) {
  const card = el('article', 'engine');
  card.dataset.id = id;
  const name = el('button', 'name link');
  name.type = 'button';
  name.dataset.action = 'details';
  const badge = el('span', 'badge');
  badge.append(el('span', 'dot'), el('span', 'word'));
  // Name and badge share the card's first row; the name takes what the badge
  // leaves and is elided there (the full text is its tooltip).
  const head = el('div', 'head');
  head.append(name, badge);
  const strip = el('div', 'strip');
  strip.setAttribute('role', 'img');
  const actions = el('div', 'actions');
  const check = el('button', 'check', 'Check now');
  check.type = 'button';
  check.dataset.action = 'check';
  const remove = el('button', 'danger delete', 'Delete');
  remove.type = 'button';
  remove.dataset.action = 'delete';
  actions.append(check, remove);
  card.append(
    head,
    field('Address', el('span', 'addr')),
    field('Streams', el('span', 'stream-count')),
    field('Last used', timeEl('ago usage')),
    field('Checked', timeEl('ago checked')),
    field('Recent checks', strip),
    el('p', 'vpn'),
    actions,
    el('p', 'error'),
  );
  return card;
}

/** The VPN node an engine sits behind (label `acestream.vpn_node`), or null. */
export function vpnNodeOf(engine) {
  return engine.labels?.[VPN_NODE_LABEL] || null;
}

const VPN_NODE_LABEL = 'acestream.vpn_node';

/** Says on an engine's card which node it is behind, and whether that node is down. */
function updateEngineVpn(card, engine, nodes) {
  const name = vpnNodeOf(engine);
  const node = name ? nodes.get(name) : null;
  const down = node?.health_status === 'unhealthy';
  card.dataset.vpnDown = String(down);
  const line = card.querySelector('.vpn');
  if (!name) {
    line.replaceChildren();
    line.removeAttribute('title');
    return;
  }
  const signature = `${name}|${down}`;
  if (line.dataset.for !== signature) {
    line.dataset.for = signature;
    const parts = [el('span', 'vpn-label', 'VPN node'), el('span', 'vpn-name', name)];
    if (down) parts.push(el('span', 'vpn-down', 'VPN down'));
    line.replaceChildren(...parts);
  }
  line.title = down
    ? `Behind VPN node ${name}, which is down: ${node.last_health_error || 'unhealthy'}. Not selected until it recovers.`
    : `Behind VPN node ${name}`;
}

function updateEngine(card, { engine, checks, nodes }) {
  const name = engineName(engine);
  card.dataset.health = engine.health_status;
  setText(card.querySelector('.name'), name);
  // One line, elided when too long (`127.0.0.1:28828` must not break in the
  // middle): the tooltip carries the full name.
  card.querySelector('.name').title = `${name}\nHealth history and transitions`;
  card.querySelector('.name').setAttribute('aria-label', `${name}: details`);
  setText(card.querySelector('.badge .word'), engine.health_status);
  const since = engine.health_since ? ` since ${fullTime(engine.health_since)}` : '';
  card.querySelector('.badge').title = `${engine.health_status}${since}`;
  setText(card.querySelector('.addr'), `${engine.host}:${engine.port}`);
  setText(card.querySelector('.stream-count'), String(engine.streams.length));
  setTime(card.querySelector('.usage'), engine.last_stream_usage);
  setTime(card.querySelector('.checked'), engine.last_health_check);
  renderStrip(card.querySelector('.strip'), checks);
  const error = engine.health_status === 'healthy' ? '' : engine.last_health_error || '';
  setText(card.querySelector('.error'), error);
  card.querySelector('.check').setAttribute('aria-label', `Check ${name} now`);
  card.querySelector('.delete').setAttribute('aria-label', `Delete ${name}`);
  updateEngineVpn(card, engine, nodes);
}

/** One tick per recent check, oldest on the left: a flapping engine shows as a striped strip. */
function renderStrip(strip, checksNewestFirst) {
  // Redrawn only when a check came (or the engine's card shows another engine).
  const signature = `${checksNewestFirst.length}|${checksNewestFirst[0]?.ts ?? ''}`;
  if (strip.dataset.for === signature) return;
  strip.dataset.for = signature;
  const checks = [...checksNewestFirst].reverse();
  while (strip.children.length > checks.length) strip.lastElementChild.remove();
  while (strip.children.length < checks.length) strip.append(el('span', 'tick'));
  checks.forEach((check, i) => {
    const tick = strip.children[i];
    tick.className = `tick ${check.ok ? 'ok' : 'fail'}`;
    tick.title = `${fullTime(check.ts)}: ${check.ok ? 'ok' : check.error || 'failed'}`;
  });
  const failed = checks.filter((c) => !c.ok).length;
  strip.setAttribute('aria-label', checks.length
    ? `${checks.length - failed} of the last ${checks.length} checks passed`
    : 'Not checked yet');
}

/** Draws the engines of the current page (already filtered and sorted, see pool.js). */
export function renderEngines(visible, store) {
  const container = $('engines');
  const items = visible.map((engine) => ({
    engine, checks: store.checks.get(engine.container_id) ?? [], nodes: store.nodes,
  }));
  // The first child is the header row of the "rows" layout.
  reconcile(container, items, (item) => item.engine.container_id, createEngine, updateEngine, 1);
  $('engines-empty').hidden = store.engines.size > 0;
}

// ---- VPN nodes ---------------------------------------------------------------

function createNode(node, id) {
  const card = el('article', 'vpn-node');
  card.dataset.id = id;
  const badge = el('span', 'badge');
  badge.append(el('span', 'dot'), el('span', 'word'));
  const head = el('div', 'head');
  head.append(el('h3', 'node-name'), badge);
  const engines = el('div', 'field node-engines');
  engines.append(el('span', 'label', 'Engines behind it'), el('ul', 'node-engine-list'));
  card.append(
    head,
    field('Public IP', el('span', 'public-ip')),
    field('Credential', el('span', 'node-credential')),
    field('Forwarded port', el('span', 'forwarded-port')),
    field('Healthy for', timeEl('since node-since')),
    field('Container health', el('span', 'docker-health')),
    el('p', 'error'),
    engines,
  );
  return card;
}

function updateNode(card, { node, engines }) {
  const down = node.health_status === 'unhealthy';
  card.dataset.health = node.health_status;
  setText(card.querySelector('.node-name'), node.name);
  setText(card.querySelector('.badge .word'), down ? 'down' : node.health_status);
  const reason = node.last_transition ? `: ${node.last_transition.reason}` : '';
  card.querySelector('.badge').title = `${node.health_status}${node.health_since ? ` since ${fullTime(node.health_since)}` : ''}${reason}`;
  const ip = node.public_ip ? `${node.public_ip}${node.country ? ` (${node.country})` : ''}` : '–';
  setText(card.querySelector('.public-ip'), ip);
  // A node the orchestrator created shows the credential it leases; a
  // configured one says so.
  const credential = card.querySelector('.node-credential');
  setText(credential, node.kind === 'on_demand' ? (node.credential ?? '–') : 'static node');
  credential.title = node.kind === 'on_demand'
    ? `Created on demand with the WireGuard credential ${node.credential}.conf of VPN_CONFIGS_DIR`
    : 'Named in GLUETUN_CONTAINER_NAME / GLUETUN_CONTAINERS';
  setText(card.querySelector('.forwarded-port'), node.forwarded_port == null ? '–' : String(node.forwarded_port));
  const sinceEl = card.querySelector('.node-since');
  setText(sinceEl.parentElement.querySelector('.label'), down ? 'Down for' : node.health_status === 'healthy' ? 'Healthy for' : 'Unknown for');
  setTime(sinceEl, node.health_since);
  setText(card.querySelector('.docker-health'), node.docker_health || '–');
  // The reason it is down (or failing checks below the threshold).
  setText(card.querySelector('.error'), node.health_status === 'healthy' ? '' : node.last_health_error || '');

  const list = card.querySelector('.node-engine-list');
  // A node may carry hundreds of engines: name the first few, count the rest
  // (the pool map shows them all).
  const items = node.engines.slice(0, NODE_ENGINES_NAMED).map((id) => ({ id, engine: engines.get(id) }));
  const more = node.engines.length - items.length;
  const signature = `${down}|${more}|${items.map(({ id, engine }) => `${id}:${engine ? `${engineName(engine)}:${engine.health_status}` : ''}`).join('|')}`;
  if (list.dataset.for === signature) return;
  list.dataset.for = signature;
  const entries = items.map(({ id, engine }) => {
    const item = el('li', 'node-engine');
    item.dataset.id = id;
    item.dataset.health = engine?.health_status ?? 'unknown';
    item.dataset.vpnDown = String(down);
    const name = el('span', 'engine-name', engine ? engineName(engine) : id);
    name.title = id;
    item.append(el('span', 'dot'), name);
    if (down) item.append(el('span', 'vpn-down', 'VPN down'));
    return item;
  });
  if (more > 0) entries.push(el('li', 'more', `and ${more} more`));
  if (!entries.length) entries.push(el('li', 'empty', 'None'));
  list.replaceChildren(...entries);
}

const NODE_ENGINES_NAMED = 12;

export function renderVpnNodes(store) {
  const nodes = [...store.nodes.values()];
  const engines = store.engines;
  $('vpn').hidden = nodes.length === 0;
  reconcile($('vpn-nodes'), nodes.map((node) => ({ node, engines })), (item) => item.node.name, createNode, updateNode);
}

// ---- streams ---------------------------------------------------------------

function link(text, href) {
  const a = el('a', 'link', text);
  if (href) {
    a.href = href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
  } else {
    a.setAttribute('aria-disabled', 'true');
  }
  return a;
}

function createStream(stream, id) {
  const card = el('article', 'stream');
  card.dataset.id = id;
  const head = el('div', 'stream-head');
  const title = el('h3', 'stream-id');
  const stop = el('button', 'danger stop', 'Stop');
  stop.type = 'button';
  stop.dataset.action = 'stop';
  head.append(title, stop);
  // The player URL of a proxied stream, with a copy button; hidden otherwise.
  const player = el('div', 'field player');
  const copy = el('button', 'copy', 'Copy');
  copy.type = 'button';
  copy.dataset.action = 'copy';
  const playerValue = el('div', 'player-value');
  playerValue.append(el('code', 'player-url'), copy);
  player.append(el('span', 'label', 'Player URL'), playerValue);
  // The same stream as HLS (`/ace/manifest.m3u8`), for phones, TVs and browsers.
  const hls = el('div', 'field player player-hls');
  const copyHls = el('button', 'copy copy-hls', 'Copy');
  copyHls.type = 'button';
  copyHls.dataset.action = 'copy-hls';
  const hlsValue = el('div', 'player-value');
  hlsValue.append(el('code', 'hls-url'), copyHls);
  hls.append(el('span', 'label', 'HLS URL'), hlsValue);
  // Failovers: a count badge that opens the list.
  const failovers = el('details', 'failovers');
  const summary = el('summary');
  summary.append(el('span', 'failover-count'));
  failovers.append(summary, el('ol', 'failover-list'));
  card.append(
    head,
    field('Key', el('code', 'key')),
    field('Engine', el('span', 'engine-name')),
    field('Started', el('span', 'started')),
    field('Duration', timeEl('since duration')),
    field('Viewers', viewersValue()),
    player,
    hls,
    failovers,
    el('div', 'links'),
    createChart(),
  );
  return card;
}

/** Streams of the built-in proxy have ids `proxy-…`. */
export function isProxied(stream) {
  return stream.id.startsWith('proxy-');
}

const PLAYER_PARAMETER = { content_id: 'id', infohash: 'infohash', magnet: 'magnet' };

/** The address players open for a proxied stream, or null. */
export function playerUrl(stream) {
  const parameter = PLAYER_PARAMETER[stream.key_type];
  if (!isProxied(stream) || !parameter) return null;
  return `${location.origin}/ace/getstream?${parameter}=${encodeURIComponent(stream.key)}`;
}

/** The HLS address of a proxied stream, or null. */
export function hlsUrl(stream) {
  if (!isProxied(stream) || !stream.play?.hls) return null;
  return `${location.origin}${stream.play.hls}`;
}

/** The viewer count and, beside it, the count by kind. */
function viewersValue() {
  const value = el('span', 'viewers-value');
  value.append(el('span', 'viewers'), el('span', 'viewer-kinds'));
  return value;
}

/** "3 viewers", "1 viewer"; "–" for a stream of another proxy, which the orchestrator cannot count. */
function viewersText(stream) {
  const n = stream.viewers ?? 0;
  if (n === 0 && !isProxied(stream)) return '–';
  return `${n} viewer${n === 1 ? '' : 's'}`;
}

/** " (2 TS, 1 HLS)"; empty without viewers. */
function viewerKindsText(stream) {
  const kinds = stream.viewers_by_kind;
  const parts = kinds ? [[kinds.ts, 'TS'], [kinds.hls, 'HLS']].filter(([k]) => k > 0) : [];
  return parts.length ? ` (${parts.map(([k, name]) => `${k} ${name}`).join(', ')})` : '';
}

function renderFailovers(details, failovers, names) {
  const count = failovers.length;
  details.hidden = count === 0;
  details.dataset.count = String(count);
  setText(details.querySelector('.failover-count'), `${count} failover${count === 1 ? '' : 's'}`);
  const list = details.querySelector('.failover-list');
  const name = (id) => names.get(id) ?? id;
  // Rebuilt only when the record (or an engine's name) changes.
  const signature = failovers.map((f) => `${f.at}|${name(f.from)}|${name(f.to)}`).join('\n');
  if (list.dataset.for === signature) return;
  list.dataset.for = signature;
  // Newest first, like an engine's transitions.
  list.replaceChildren(...[...failovers].reverse().map((f) => {
    const item = el('li', 'failover');
    const when = el('time', '', clock(f.at));
    when.dateTime = f.at;
    when.title = fullTime(f.at);
    const move = el('span', 'move', `${name(f.from)} → ${name(f.to)}`);
    move.title = `${f.from} → ${f.to}`;
    item.append(when, move, el('span', 'gap', `${Math.round(f.gap_ms)} ms gap`), el('span', 'reason', f.reason));
    return item;
  }));
}

function updateStream(card, { stream, engine, samples, names }) {
  setText(card.querySelector('.stream-id'), stream.id);
  card.querySelector('.stop').setAttribute('aria-label', `Stop stream ${stream.id}`);
  setText(card.querySelector('.key'), `${stream.key} (${stream.key_type}${stream.is_live ? ', live' : ''})`);
  setText(card.querySelector('.engine-name'), engine ? engineName(engine) : stream.container_id);
  const started = card.querySelector('.started');
  setText(started, clock(stream.started_at));
  started.title = fullTime(stream.started_at);
  setTime(card.querySelector('.duration'), stream.started_at);
  card.dataset.proxied = String(isProxied(stream));
  setText(card.querySelector('.viewers'), viewersText(stream));
  setText(card.querySelector('.viewer-kinds'), viewerKindsText(stream));
  const url = playerUrl(stream);
  card.querySelector('.player').hidden = !url;
  setText(card.querySelector('.player-url'), url ?? '');
  card.querySelector('.copy').setAttribute('aria-label', `Copy the player URL of ${stream.id}`);
  const hls = hlsUrl(stream);
  card.querySelector('.player-hls').hidden = !hls;
  setText(card.querySelector('.hls-url'), hls ?? '');
  card.querySelector('.copy-hls').setAttribute('aria-label', `Copy the HLS URL of ${stream.id}`);
  renderFailovers(card.querySelector('.failovers'), stream.failovers ?? [], names);
  const links = card.querySelector('.links');
  if (links.dataset.for !== `${stream.stat_url}|${stream.command_url}`) {
    links.dataset.for = `${stream.stat_url}|${stream.command_url}`;
    links.replaceChildren(link('stat', stream.stat_url), link('command', stream.command_url));
  }
  drawChart(card.querySelector('.chart'), samples);
}

/**
 * Draws the streams of the current page. `samplesOf(id)` answers the stat
 * history the page holds for a stream, oldest first.
 */
export function renderStreams(visible, store, samplesOf) {
  const engines = store.engines;
  const names = { get: (id) => (engines.has(id) ? engineName(engines.get(id)) : undefined) };
  const items = visible.map((stream) => ({
    stream,
    engine: engines.get(stream.container_id),
    samples: samplesOf(stream.id),
    names,
  }));
  reconcile($('streams'), items, (item) => item.stream.id, createStream, updateStream);
  $('streams-empty').hidden = store.streams.size > 0;
}

/** Redraws one stream's chart after new statistics arrived. */
export function redrawStreamChart(streamId, samples) {
  const card = [...$('streams').children].find((c) => c.dataset.id === streamId);
  if (card) drawChart(card.querySelector('.chart'), samples);
}

// ---- engine detail -----------------------------------------------------------

export function renderDetail(engine, history) {
  $('detail-title').textContent = engine ? engineName(engine) : history.container_id;
  const facts = [
    ['Id', history.container_id],
    ['Health', `${history.health_status}${history.health_since ? ` since ${fullTime(history.health_since)}` : ''}`],
    ['Last check', fullTime(history.last_health_check)],
    ['Failures in a row', String(history.consecutive_failures)],
    ['Last error', history.last_health_error || '–'],
  ];
  if (engine) {
    facts.push(
      ['Address', `${engine.host}:${engine.port}`],
      ['Runtime', engine.runtime],
      ['Probe latency', millis(engine.last_probe_latency_ms)],
      ['Streams started', String(engine.streams_total)],
      ['Busy time', duration(engine.busy_seconds)],
      ['Reservations', String(engine.reservations)],
    );
  }
  $('detail-facts').replaceChildren(...facts.flatMap(([term, value]) => [el('dt', '', term), el('dd', '', value)]));

  const transitions = history.transitions.map((t) => {
    const item = el('li', 'transition');
    item.dataset.to = t.to;
    const when = el('time', '', `${fullTime(t.ts)} (${ago(t.ts)})`);
    when.dateTime = t.ts;
    item.append(when, el('span', 'change', `${t.from} → ${t.to}`), el('span', 'reason', t.reason));
    return item;
  });
  if (!transitions.length) transitions.push(el('li', 'empty', 'No transitions yet.'));
  $('detail-transitions').replaceChildren(...transitions);

  const rows = history.checks.slice(0, 50).map((c) => {
    const row = el('tr', c.ok ? 'ok' : 'fail');
    row.append(
      el('td', '', fullTime(c.ts)),
      el('td', 'result', c.ok ? 'ok' : 'failed'),
      el('td', '', c.source),
      el('td', '', millis(c.latency_ms)),
      el('td', '', c.error || ''),
    );
    return row;
  });
  $('detail-checks').replaceChildren(...rows);
}

// ---- toasts ------------------------------------------------------------------

/** Shows a short message; errors stay longer. */
export function toast(message, kind = 'info') {
  const item = el('div', `toast ${kind}`, message);
  $('toasts').append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 12000 : 6000);
}

/** Sets the connection indicator: state "live", "polling", "offline" or "connecting". */
export function renderConnection(state, text, title = '') {
  const box = $('connection');
  box.dataset.state = state;
  setText(box.querySelector('.text'), text);
  box.title = title;
}
