-- Consumer-initiated pulls: a registration may carry a sync plan (JSON: the export URL, its
-- _type and _typeFilter, and how often), and when its next pull is due. Replicas claim a due
-- pull by moving sync_next_at on, so each runs once.
ALTER TABLE providers ADD COLUMN sync_plan TEXT;
ALTER TABLE providers ADD COLUMN sync_next_at INTEGER;
