-- Expected arrivals: a partner's file that should arrive in each window of a schedule (cron
-- in the partner's time zone), by a deadline, with a grace after it. Windows are rows,
-- written once their opening has passed (by the database's clock), whose state moves
-- open -> met, or open -> late -> met/missed; each move is one conditional update in the
-- transaction that records its event, so each event is recorded once across instances.
CREATE TABLE IF NOT EXISTS expectations (
    name             TEXT    PRIMARY KEY,
    username         TEXT    NOT NULL,
    folder           TEXT,
    pattern          TEXT    NOT NULL,
    schedule         TEXT    NOT NULL,
    timezone         TEXT    NOT NULL,
    deadline_s       BIGINT  NOT NULL,
    grace_s          BIGINT  NOT NULL DEFAULT 0,
    min_files        INTEGER NOT NULL DEFAULT 1,
    min_bytes        BIGINT  NOT NULL DEFAULT 0,
    created_us       BIGINT  NOT NULL,
    -- Windows opening up to here have been written.
    windows_until_us BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS expectations_user ON expectations (username);

CREATE TABLE IF NOT EXISTS expectation_windows (
    expectation TEXT   NOT NULL REFERENCES expectations (name) ON DELETE CASCADE,
    opens_us    BIGINT NOT NULL,
    deadline_us BIGINT NOT NULL,
    closes_us   BIGINT NOT NULL,
    state       TEXT   NOT NULL DEFAULT 'open',
    -- The arrival events that met it (JSON list), and whether after the deadline.
    met_by      TEXT,
    late        BOOLEAN NOT NULL DEFAULT FALSE,
    settled_us  BIGINT,
    PRIMARY KEY (expectation, opens_us)
);
CREATE INDEX IF NOT EXISTS expectation_windows_state ON expectation_windows (state, opens_us);

-- Arrivals of an account in time order, for matching them to windows.
CREATE INDEX IF NOT EXISTS events_user_created ON events (username, created_us);
