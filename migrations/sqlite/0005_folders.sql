-- Partner folders (logical directories): a JSON list of {path, home, permissions} per
-- account. An empty list means the account's home is its root, as before folders existed.
ALTER TABLE accounts ADD COLUMN folders TEXT NOT NULL DEFAULT '[]';
