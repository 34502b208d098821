-- The arrival-event outbox: events written in the same database as the accounts before a
-- client's close is answered, one delivery row per sink, and temp-name uploads awaiting the
-- rename that makes them arrive. Times are microseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT   NOT NULL UNIQUE,
    type       TEXT   NOT NULL,
    username   TEXT   NOT NULL,
    subject    TEXT   NOT NULL,
    created_us BIGINT NOT NULL,
    body       TEXT   NOT NULL
);

CREATE TABLE IF NOT EXISTS event_deliveries (
    event_seq      BIGINT  NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    sink           TEXT    NOT NULL,
    username       TEXT    NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'pending',
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at_us     BIGINT  NOT NULL,
    lease_owner    TEXT,
    lease_until_us BIGINT  NOT NULL DEFAULT 0,
    last_error     TEXT,
    delivered_us   BIGINT,
    PRIMARY KEY (event_seq, sink)
);

CREATE INDEX IF NOT EXISTS event_deliveries_queue
    ON event_deliveries (sink, state, username, event_seq);

CREATE TABLE IF NOT EXISTS staged_uploads (
    location   TEXT   PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    sha256     TEXT   NOT NULL,
    etag       TEXT,
    started_us BIGINT NOT NULL,
    created_us BIGINT NOT NULL
);
