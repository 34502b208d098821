-- Receipts: a folder with --receipt gets, for each arrival, a JSON receipt written into the
-- partner's folders. The intent says where; the arrival's event transaction turns that into
-- a pending delivery to the built-in `receipts` sink and the target it writes to.
ALTER TABLE commit_intents ADD COLUMN receipt TEXT;
CREATE TABLE IF NOT EXISTS receipts (
    event_id TEXT PRIMARY KEY,
    target   TEXT NOT NULL
);
