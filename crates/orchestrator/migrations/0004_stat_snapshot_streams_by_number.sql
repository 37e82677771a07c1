-- Stat snapshots name their stream by a number instead of its id. The id
-- (73 characters for a proxied stream) was written twice per row, in the row
-- and in its index: most of a row's ~214 bytes, and most of the file.
ALTER TABLE streams ADD COLUMN seq INTEGER;
UPDATE streams SET seq = rowid;
CREATE UNIQUE INDEX streams_by_seq ON streams (seq);

CREATE TABLE stat_snapshots_by_seq (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     INTEGER NOT NULL, -- streams.seq
    ts         INTEGER NOT NULL,
    peers      INTEGER,
    speed_down INTEGER,
    speed_up   INTEGER,
    downloaded INTEGER,
    uploaded   INTEGER,
    status     TEXT
);
-- Snapshots of a stream that is not in the table (none are written that
-- way) could never be loaded; they are left behind.
INSERT INTO stat_snapshots_by_seq
    (id, stream, ts, peers, speed_down, speed_up, downloaded, uploaded, status)
SELECT s.id, t.seq, s.ts, s.peers, s.speed_down, s.speed_up, s.downloaded, s.uploaded, s.status
FROM stat_snapshots s JOIN streams t ON t.id = s.stream_id;
DROP TABLE stat_snapshots;
ALTER TABLE stat_snapshots_by_seq RENAME TO stat_snapshots;
CREATE INDEX stat_snapshots_by_stream ON stat_snapshots (stream, id);
