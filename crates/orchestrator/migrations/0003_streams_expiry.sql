-- The retention clean-up walks ended streams oldest first
-- (STREAMS_RETENTION_DAYS); without this index each batch would scan them all.
CREATE INDEX streams_ended_by_time ON streams (ended_at) WHERE status = 'ended';
