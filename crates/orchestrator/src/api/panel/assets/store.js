// What the page knows of the pool: a snapshot from the server, kept current by
// the deltas after it (docs/DASHBOARD.md, "Live updates"). Applying a delta
// only records which engines changed; the views redraw those, once per frame.

export function createStore() {
  return {
    version: null,
    generatedAt: null,
    recentMax: 30,
    engines: new Map(), // container_id -> engine, as GET /engines answers it
    checks: new Map(), // container_id -> recent checks, newest first
    streams: new Map(), // stream id -> stream
    nodes: new Map(), // VPN node name -> node, in configuration order
    // What changed since the views last drew: ids of engines, and flags.
    changed: { engines: new Set(), membership: true, streams: true, nodes: true },
  };
}

/** Replaces everything with a snapshot. */
export function loadSnapshot(store, snapshot) {
  store.version = snapshot.version ?? null;
  store.generatedAt = snapshot.generated_at;
  store.recentMax = snapshot.recent_checks_max ?? 30;
  store.engines = new Map(snapshot.engines.map((e) => [e.container_id, e]));
  store.checks = new Map();
  for (const id of store.engines.keys()) store.checks.set(id, snapshot.recent_checks?.[id] ?? []);
  store.streams = new Map(snapshot.streams.map((s) => [s.id, s]));
  store.nodes = new Map((snapshot.vpn_nodes ?? []).map((n) => [n.name, n]));
  for (const id of store.engines.keys()) store.changed.engines.add(id);
  store.changed.membership = true;
  store.changed.streams = true;
  store.changed.nodes = true;
}

/** Adds, patches or removes keyed items; answers whether an item came or went. */
function merge(items, section) {
  let membership = false;
  for (const [id, patch] of Object.entries(section ?? {})) {
    if (patch === null) {
      membership = items.delete(id) || membership;
    } else if (items.has(id)) {
      Object.assign(items.get(id), patch);
    } else {
      items.set(id, patch);
      membership = true;
    }
  }
  return membership;
}

/** Applies one delta: `engines`, `checks`, `streams`, `vpn_nodes` as the server sends them. */
export function applyDelta(store, delta) {
  const engines = delta.engines ?? {};
  for (const [id, patch] of Object.entries(engines)) {
    store.changed.engines.add(id);
    // A name change moves the engine in the name order.
    if (patch === null || !store.engines.has(id) || 'container_name' in patch) store.changed.membership = true;
    if (patch === null) store.checks.delete(id);
  }
  merge(store.engines, engines);
  for (const [id, fresh] of Object.entries(delta.checks ?? {})) {
    const engine = store.engines.get(id);
    if (!engine) continue;
    const checks = fresh.map(([age, ok, error]) => {
      const check = { ts: new Date(delta.t - age).toISOString(), ok: ok === 1 };
      if (error !== undefined) check.error = error;
      return check;
    });
    // A check sets last_health_check to its own time; the server leaves it
    // out of the patch when that is all there is to say.
    if (!(engines[id] && 'last_health_check' in engines[id])) engine.last_health_check = checks[0].ts;
    store.checks.set(id, checks.concat(store.checks.get(id) ?? []).slice(0, store.recentMax));
    store.changed.engines.add(id);
  }
  if (delta.streams) {
    merge(store.streams, delta.streams);
    store.changed.streams = true;
  }
  if (delta.vpn_nodes) {
    merge(store.nodes, delta.vpn_nodes);
    store.changed.nodes = true;
    // Engines behind a node that went down are drawn differently.
    store.changed.membership = true;
  }
  store.version = delta.version;
  store.generatedAt = delta.generated_at;
}

/** The started streams, newest first (as GET /streams orders them). */
export function streamList(store) {
  return [...store.streams.values()].sort((a, b) => (a.started_at < b.started_at ? 1 : a.started_at > b.started_at ? -1 : 0));
}

/** The store in the snapshot's shape, for comparing with GET /panel/snapshot. */
export function asSnapshot(store) {
  return {
    version: store.version,
    engines: [...store.engines.values()],
    recent_checks: Object.fromEntries(store.checks),
    streams: streamList(store),
    vpn_nodes: [...store.nodes.values()],
  };
}
