-- When the job last sent its kick-off, cleared by nothing: with no status URL stored, a set
-- value means a kick-off was interrupted (a crash) before the provider's answer was recorded.
ALTER TABLE jobs ADD COLUMN kickoff_started_at INTEGER;
