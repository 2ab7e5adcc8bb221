-- What the job page shows beyond counts: the resources a manifest said each file holds (NULL when
-- it gave no count), the job's throughput over its life (JSON samples, written when the job ends),
-- and a display name for a registration.
ALTER TABLE job_files ADD COLUMN expected_resources INTEGER;
ALTER TABLE jobs ADD COLUMN throughput TEXT;
ALTER TABLE providers ADD COLUMN name TEXT;
-- Refused pings are kept in a budget of their own, so a flood of them cannot push registrations,
-- cancels and deletes out of the audit trail.
ALTER TABLE audit_events ADD COLUMN refusal INTEGER NOT NULL DEFAULT 0;
UPDATE audit_events SET refusal = 1 WHERE action = 'ping refused';
CREATE INDEX audit_events_by_class ON audit_events (refusal, id);
