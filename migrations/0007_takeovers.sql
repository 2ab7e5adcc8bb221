-- Claims of a lease that had lapsed under another owner; capped (a job that kills every process
-- that runs it must not go round for ever).
ALTER TABLE jobs ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0;
