-- Addresses banned after repeated failed logins, shared by every instance on this database.
CREATE TABLE bans (
    address    TEXT PRIMARY KEY,
    until_us   BIGINT NOT NULL,
    failures   INTEGER NOT NULL,
    created_us BIGINT NOT NULL
);
