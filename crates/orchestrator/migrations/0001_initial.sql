-- Timestamps are milliseconds since the Unix epoch (UTC).
CREATE TABLE engines (
    container_id         TEXT PRIMARY KEY,
    container_name       TEXT,
    host                 TEXT NOT NULL,
    port                 INTEGER NOT NULL,
    labels               TEXT NOT NULL DEFAULT '{}',
    runtime              TEXT NOT NULL,
    first_seen           INTEGER NOT NULL,
    last_seen            INTEGER NOT NULL,
    health_status        TEXT NOT NULL,
    last_health_check    INTEGER,
    health_since         INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_health_error    TEXT,
    last_latency_ms      REAL,
    last_stream_usage    INTEGER,
    streams_total        INTEGER NOT NULL DEFAULT 0,
    busy_ms_closed       INTEGER NOT NULL DEFAULT 0,
    busy_since           INTEGER
);

CREATE TABLE streams (
    id                  TEXT PRIMARY KEY,
    key_type            TEXT NOT NULL,
    key                 TEXT NOT NULL,
    container_id        TEXT NOT NULL,
    playback_session_id TEXT,
    stat_url            TEXT,
    command_url         TEXT,
    is_live             INTEGER NOT NULL,
    started_at          INTEGER NOT NULL,
    ended_at            INTEGER,
    status              TEXT NOT NULL,
    end_reason          TEXT
);
CREATE INDEX streams_by_status ON streams (status, started_at);

CREATE TABLE stat_snapshots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id  TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    peers      INTEGER,
    speed_down INTEGER,
    speed_up   INTEGER,
    downloaded INTEGER,
    uploaded   INTEGER,
    status     TEXT
);
CREATE INDEX stat_snapshots_by_stream ON stat_snapshots (stream_id, id);

CREATE TABLE health_checks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    engine_id  TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    ok         INTEGER NOT NULL,
    source     TEXT NOT NULL,
    latency_ms REAL,
    error      TEXT
);
CREATE INDEX health_checks_by_engine ON health_checks (engine_id, id);

CREATE TABLE health_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    engine_id   TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX health_transitions_by_engine ON health_transitions (engine_id, id);
