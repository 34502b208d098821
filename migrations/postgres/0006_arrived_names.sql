-- Folders that accept a name once (`--no-reuse-names`): the locations that ever arrived there,
-- remembered in the transaction that records the arrival (an intent says whether to).
ALTER TABLE commit_intents ADD COLUMN remember_name BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE IF NOT EXISTS arrived_names (
    location   TEXT   PRIMARY KEY,
    arrived_us BIGINT NOT NULL
);
