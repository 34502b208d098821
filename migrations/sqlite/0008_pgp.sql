-- PGP on arrival. `accounts.pgp`: the partner's signing keys and, for an account without
-- folders, where its encrypted arrivals are decrypted to (JSON). A commit intent names the
-- decryption its arrival asks for; the arrival's event transaction turns that into a job
-- (keyed by the arrival's event id) and a pending delivery to the built-in `decrypt` sink,
-- which runs it and deletes the job in the transaction that records its outcome event.
ALTER TABLE accounts ADD COLUMN pgp TEXT NOT NULL DEFAULT '{}';
ALTER TABLE commit_intents ADD COLUMN decrypt TEXT;
CREATE TABLE IF NOT EXISTS decrypt_jobs (
    event_id TEXT PRIMARY KEY,
    job      TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
