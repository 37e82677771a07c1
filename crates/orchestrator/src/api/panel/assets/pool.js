// The pool at a glance: a map with one small cell per engine, coloured by
// health and grouped by VPN node (or by host), and the filters (search,
// health, node) that choose which engines the detailed list below shows, a
// page at a time, problems first.
//
// Sizes: the map has one element per engine and a few per group; everything
// else on the page is bounded by the page size, whatever the pool's size.
// Redraws touch only the cells of engines that changed.

const $ = (id) => document.getElementById(id);
const byName = new Intl.Collator(undefined, { numeric: true });

const VPN_NODE_LABEL = 'acestream.vpn_node';

export function engineName(engine) {
  return engine.container_name || engine.container_id;
}

/** The group an engine is drawn in: its VPN node, else its host. */
function groupOf(engine) {
  const node = engine.labels?.[VPN_NODE_LABEL];
  return node ? `node:${node}` : `host:${engine.host}`;
}

function groupTitle(key) {
  const [kind, name] = [key.slice(0, key.indexOf(':')), key.slice(key.indexOf(':') + 1)];
  return kind === 'node' ? `VPN node ${name}` : `Host ${name}`;
}

/** What a person sees first: broken engines, then doubtful ones, then the rest. */
function rank(engine, nodes) {
  const node = engine.labels?.[VPN_NODE_LABEL];
  if (engine.health_status === 'unhealthy') return 0;
  if (node && nodes.get(node)?.health_status === 'unhealthy') return 1;
  if (engine.health_status !== 'healthy') return 2;
  return 3;
}

/** The look of a cell: its health, or "vpn-down" for an engine whose node is down. */
function cellState(engine, nodes) {
  const node = engine.labels?.[VPN_NODE_LABEL];
  if (node && nodes.get(node)?.health_status === 'unhealthy') return 'vpn-down';
  return engine.health_status;
}

function cellTitle(engine, nodes) {
  const name = engineName(engine);
  const parts = [`${name} — ${engine.health_status}`, `${engine.host}:${engine.port}`];
  if (engine.health_status !== 'healthy' && engine.last_health_error) parts.push(engine.last_health_error);
  const node = engine.labels?.[VPN_NODE_LABEL];
  if (node && nodes.get(node)?.health_status === 'unhealthy') parts.push(`VPN node ${node} is down`);
  if (engine.streams.length) parts.push(`${engine.streams.length} stream${engine.streams.length > 1 ? 's' : ''}`);
  return parts.join('\n');
}

export function createPool({ pageSize }) {
  return {
    order: [], // engine ids by name
    groups: new Map(), // group key -> { box, cells, count }
    cells: new Map(), // engine id -> cell element
    search: '',
    health: 'all',
    group: '',
    page: 0,
    pageSize,
    haystack: new Map(), // engine id -> lower-case "name host:port id"
  };
}

function haystackOf(engine) {
  return `${engineName(engine)} ${engine.host}:${engine.port} ${engine.container_id}`.toLowerCase();
}

/** Rebuilds the name order, the groups and their cells after engines came or went. */
function rebuildMap(pool, store) {
  pool.order = [...store.engines.values()]
    .sort((a, b) => byName.compare(engineName(a), engineName(b)) || byName.compare(a.container_id, b.container_id))
    .map((e) => e.container_id);
  const byGroup = new Map();
  for (const id of pool.order) {
    const key = groupOf(store.engines.get(id));
    if (!byGroup.has(key)) byGroup.set(key, []);
    byGroup.get(key).push(id);
  }
  const keys = [...byGroup.keys()].sort((a, b) => byName.compare(a, b));
  const map = $('pool-map');
  const fragment = document.createDocumentFragment();
  const cells = new Map();
  const groups = new Map();
  for (const key of keys) {
    let group = pool.groups.get(key);
    if (!group) {
      const box = document.createElement('section');
      box.className = 'map-group';
      box.dataset.group = key;
      const head = document.createElement('h3');
      head.className = 'map-group-head';
      const title = document.createElement('span');
      title.className = 'map-group-title';
      title.textContent = groupTitle(key);
      const counts = document.createElement('span');
      counts.className = 'map-group-counts';
      head.append(title, counts);
      const grid = document.createElement('div');
      grid.className = 'map-cells';
      grid.setAttribute('role', 'img');
      box.append(head, grid);
      group = { box, grid, counts };
    }
    const gridFragment = document.createDocumentFragment();
    for (const id of byGroup.get(key)) {
      let cell = pool.cells.get(id);
      if (!cell) {
        cell = document.createElement('span');
        cell.className = 'cell';
        cell.dataset.id = id;
      }
      cells.set(id, cell);
      gridFragment.append(cell);
    }
    group.grid.replaceChildren(gridFragment);
    groups.set(key, group);
    fragment.append(group.box);
  }
  map.replaceChildren(fragment);
  pool.cells = cells;
  pool.groups = groups;
  pool.haystack = new Map(pool.order.map((id) => [id, haystackOf(store.engines.get(id))]));
  renderGroupFilter(pool, keys);
}

function renderGroupFilter(pool, keys) {
  const select = $('group-filter');
  const wanted = ['', ...keys];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join('\n') !== have.join('\n')) {
    const options = wanted.map((key) => {
      const option = document.createElement('option');
      option.value = key;
      option.textContent = key ? groupTitle(key) : 'All hosts and nodes';
      return option;
    });
    select.replaceChildren(...options);
  }
  if (!keys.includes(pool.group)) pool.group = '';
  select.value = pool.group;
  $('group-filter-box').hidden = keys.length < 2;
}

function matches(pool, store, id) {
  const engine = store.engines.get(id);
  if (pool.health !== 'all') {
    const state = cellState(engine, store.nodes);
    if (pool.health === 'unhealthy' ? !(state === 'unhealthy' || state === 'vpn-down') : state !== pool.health) return false;
  }
  if (pool.group && groupOf(engine) !== pool.group) return false;
  if (pool.search && !pool.haystack.get(id)?.includes(pool.search)) return false;
  return true;
}

/**
 * Redraws the map (only changed cells unless `all`), the counts, and answers
 * the engines of the current page, problems first, with the total that match.
 */
export function renderPool(pool, store, all) {
  const changed = store.changed;
  const rebuild = changed.membership || all;
  if (changed.membership) rebuildMap(pool, store);
  const ids = rebuild ? pool.order : changed.engines;
  for (const id of ids) {
    const engine = store.engines.get(id);
    const cell = pool.cells.get(id);
    if (!engine || !cell) continue;
    const state = cellState(engine, store.nodes);
    if (cell.dataset.health !== state) cell.dataset.health = state;
    const title = cellTitle(engine, store.nodes);
    if (cell.title !== title) cell.title = title;
    if (!rebuild) pool.haystack.set(id, haystackOf(engine));
  }

  // Counts per health (for the filter buttons) and per group (for the map).
  const counts = { all: 0, unhealthy: 0, unknown: 0, healthy: 0 };
  const perGroup = new Map();
  const buckets = [[], [], [], []];
  for (const id of pool.order) {
    const engine = store.engines.get(id);
    const state = cellState(engine, store.nodes);
    counts.all += 1;
    if (state === 'vpn-down' || state === 'unhealthy') counts.unhealthy += 1;
    else counts[state] = (counts[state] ?? 0) + 1;
    const key = groupOf(engine);
    const group = perGroup.get(key) ?? { total: 0, bad: 0 };
    group.total += 1;
    if (state === 'unhealthy' || state === 'vpn-down') group.bad += 1;
    perGroup.set(key, group);
    const shown = matches(pool, store, id);
    const cell = pool.cells.get(id);
    if (cell && cell.classList.contains('dim') === shown) cell.classList.toggle('dim', !shown);
    if (shown) buckets[rank(engine, store.nodes)].push(engine);
  }
  for (const [key, group] of pool.groups) {
    const c = perGroup.get(key) ?? { total: 0, bad: 0 };
    const text = `${c.total} engine${c.total === 1 ? '' : 's'}${c.bad ? `, ${c.bad} unhealthy` : ''}`;
    if (group.counts.textContent !== text) group.counts.textContent = text;
    group.box.dataset.bad = String(c.bad > 0);
    group.grid.setAttribute('aria-label', `${groupTitle(key)}: ${text}`);
  }
  for (const button of document.querySelectorAll('#health-filter [data-health]')) {
    const count = button.querySelector('.count');
    const text = String(counts[button.dataset.health] ?? 0);
    if (count.textContent !== text) count.textContent = text;
  }
  $('pool-map-section').hidden = counts.all === 0;

  const list = buckets.flat();
  const pages = Math.max(1, Math.ceil(list.length / pool.pageSize));
  pool.page = Math.min(pool.page, pages - 1);
  const start = pool.page * pool.pageSize;
  const visible = list.slice(start, start + pool.pageSize);
  const summary = list.length === 0
    ? (counts.all ? 'No engine matches the filters.' : '')
    : `Showing ${start + 1}–${start + visible.length} of ${list.length}${list.length === counts.all ? '' : ` (of ${counts.all})`} engines, problems first`;
  const status = $('engines-shown');
  if (status.textContent !== summary) status.textContent = summary;
  renderPager($('engines-pager'), pool.page, pages);
  changed.engines.clear();
  changed.membership = false;
  return visible;
}

/** Previous / "Page 2 of 40" / Next; hidden when everything fits on one page. */
export function renderPager(nav, page, pages) {
  nav.hidden = pages <= 1;
  const text = `Page ${page + 1} of ${pages}`;
  const label = nav.querySelector('.page');
  if (label.textContent !== text) label.textContent = text;
  nav.querySelector('[data-page="prev"]').disabled = page === 0;
  nav.querySelector('[data-page="next"]').disabled = page >= pages - 1;
}
