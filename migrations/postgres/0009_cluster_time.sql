-- Exactly once in a cluster. Every time one instance compares with another's (heartbeats,
-- liveness, leases, claims, grace periods) is the database's own clock: `wharf_clock` gives
-- it in microseconds since the Unix epoch, the unit of every *_us column.
CREATE OR REPLACE VIEW wharf_clock AS
    SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT AS now_us;

-- How a commit intent taken over by another instance's reconciler was settled, so that its
-- first owner, alive after all (a paused VM, a partition), learns what became of its work
-- instead of recording it a second time: 'announced' (the object was there and its arrival
-- was recorded) or 'not_committed' (it was not there; a failed event was recorded).
CREATE TABLE IF NOT EXISTS intent_outcomes (
    intent_id  TEXT   PRIMARY KEY,
    outcome    TEXT   NOT NULL,
    created_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS intent_outcomes_created ON intent_outcomes (created_us);

-- The location an event is about, so the last arrival at a location is found by index.
ALTER TABLE events ADD COLUMN location TEXT;
CREATE INDEX IF NOT EXISTS events_location ON events (location, seq) WHERE location IS NOT NULL;

-- The S3 multipart upload an intent completes, so the reconciler finds it by index.
ALTER TABLE commit_intents ADD COLUMN upload_id TEXT;
CREATE INDEX IF NOT EXISTS commit_intents_upload ON commit_intents (upload_id) WHERE upload_id IS NOT NULL;

-- How long each instance may stay silent before it is taken for dead (3 heartbeats of its
-- own configuration), so instances configured differently judge each other rightly.
ALTER TABLE instances ADD COLUMN lapse_us BIGINT NOT NULL DEFAULT 0;

-- The decryption job a plaintext's commit intent settles, so a job is given up only while no
-- commit of its plaintext is under way.
ALTER TABLE commit_intents ADD COLUMN job TEXT;
CREATE INDEX IF NOT EXISTS commit_intents_job ON commit_intents (job) WHERE job IS NOT NULL;

-- Duplicates (a file whose SHA-256 and size equal an earlier arrival's in the same folder,
-- within its window): the rules of an account without folders; each arrival's digest in a
-- folder that flags or refuses duplicates, recorded with its event; and the digest an intent
-- commits, unique so that two uploads of the same bytes commit one after the other.
ALTER TABLE accounts ADD COLUMN rules TEXT NOT NULL DEFAULT '{}';
ALTER TABLE commit_intents ADD COLUMN digest_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS commit_intents_digest ON commit_intents (digest_key) WHERE digest_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS arrived_digests (
    digest_key TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    path       TEXT   NOT NULL,
    arrived_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    PRIMARY KEY (digest_key, event_id)
);
CREATE INDEX IF NOT EXISTS arrived_digests_expires ON arrived_digests (expires_us);
