-- What the job page shows beyond counts: the resources a manifest said each file holds (NULL when
-- it gave no count), the job's throughput over its life (JSON samples, written when the job ends),
-- and a display name for a registration.
ALTER TABLE job_files ADD COLUMN expected_resources INTEGER;
ALTER TABLE jobs ADD COLUMN throughput TEXT;
ALTER TABLE providers ADD COLUMN name TEXT;
