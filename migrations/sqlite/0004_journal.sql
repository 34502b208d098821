-- What survives a process that dies at the wrong moment. Times are microseconds since the
-- Unix epoch.

-- Every running instance, with its last sign of life: work an instance left (intents, live
-- uploads) is taken over once its heartbeat is stale.
CREATE TABLE IF NOT EXISTS instances (
    id           TEXT   PRIMARY KEY,
    heartbeat_us BIGINT NOT NULL
);

-- A commit under way: written before an object becomes visible at `location`, deleted in the
-- same transaction as its arrival event. Its primary key makes it the lock that lets one
-- writer at a time commit a key. `detail` (JSON) holds what the reconciler needs to finish it.
CREATE TABLE IF NOT EXISTS commit_intents (
    location       TEXT   PRIMARY KEY,
    id             TEXT   NOT NULL,
    instance       TEXT   NOT NULL,
    detail         TEXT   NOT NULL,
    created_us     BIGINT NOT NULL,
    claimed_by     TEXT,
    claim_until_us BIGINT NOT NULL DEFAULT 0
);

-- Storage uploads in progress (an S3 multipart upload id, a local temporary file), so those
-- of a dead instance can be aborted and announced as failed.
CREATE TABLE IF NOT EXISTS live_uploads (
    id             TEXT   PRIMARY KEY,
    instance       TEXT   NOT NULL,
    detail         TEXT   NOT NULL,
    created_us     BIGINT NOT NULL,
    claimed_by     TEXT,
    claim_until_us BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS live_uploads_instance ON live_uploads (instance);
CREATE INDEX IF NOT EXISTS commit_intents_instance ON commit_intents (instance);
CREATE INDEX IF NOT EXISTS staged_uploads_created ON staged_uploads (created_us);
CREATE INDEX IF NOT EXISTS events_created ON events (created_us);
