-- Failovers of a stream served by the built-in proxy: a JSON array of
-- {at, from, to, reason, gap_ms}, oldest first (bounded by the proxy).
ALTER TABLE streams ADD COLUMN failovers TEXT NOT NULL DEFAULT '[]';
