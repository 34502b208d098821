-- Malware scanning: what the scan of a temp-name upload found, kept until its rename makes it
-- arrive (the arrival's event carries it).
ALTER TABLE staged_uploads ADD COLUMN scan TEXT;
