-- A durable point of a file being downloaded (JSON: the bytes stored whole, the line and resource
-- counts there, the provider's validator and the destination's state), so a replica taking the
-- job over continues the file instead of starting it again. Cleared when the file ends.
ALTER TABLE job_files ADD COLUMN checkpoint TEXT;
-- Who downloads the file: a lease like a job's, so one job's files can be spread over several
-- replicas; its token fences the file's end and checkpoints, and reclaims after a lapse count.
ALTER TABLE job_files ADD COLUMN lease_owner TEXT;
ALTER TABLE job_files ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_files ADD COLUMN lease_expires_at BIGINT;
ALTER TABLE job_files ADD COLUMN takeovers BIGINT NOT NULL DEFAULT 0;
-- Helpers look for pending files of importing jobs.
CREATE INDEX job_files_pending ON job_files (job_id, idx) WHERE state = 'pending';
