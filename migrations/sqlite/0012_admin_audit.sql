-- The audit trail (`wharf audit`): every change an admin makes through the CLI or the admin
-- API, and every ban the server sets or prunes, appended in the transaction that makes the
-- change. Each row's hash covers its own content and the previous row's hash, so a row
-- changed, deleted or inserted out of order breaks the chain `wharf audit verify` walks.
-- `changes` is the JSON text exactly as hashed (TEXT, so it is kept byte for byte).
CREATE TABLE IF NOT EXISTS audit_log (
    seq       BIGINT PRIMARY KEY,
    at_us     BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    target    TEXT   NOT NULL,
    changes   TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at_us);
CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor, seq);

-- The end of the chain: one row, read and moved by every append inside a write transaction
-- (BEGIN IMMEDIATE), so concurrent writers append one after the other.
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000')
    ON CONFLICT (id) DO NOTHING;

-- Where the chain starts again after `audit.retention` pruned its oldest rows: the last
-- row removed and its hash (the prev_hash of the first row kept).
CREATE TABLE IF NOT EXISTS audit_anchors (
    seq    BIGINT PRIMARY KEY,
    hash   TEXT   NOT NULL,
    pruned BIGINT NOT NULL,
    at_us  BIGINT NOT NULL
);

-- Bearer tokens of the admin API (`wharf admin token`): looked up by their non-secret id,
-- kept only as the SHA-256 of the whole token.
CREATE TABLE IF NOT EXISTS admin_tokens (
    id           TEXT   PRIMARY KEY,
    name         TEXT   NOT NULL UNIQUE,
    scope        TEXT   NOT NULL,
    hash         TEXT   NOT NULL,
    created_us   BIGINT NOT NULL,
    expires_us   BIGINT,
    last_used_us BIGINT
);
