-- A job's plan is a list of manifests (a ping has one; a Bulk Submit submission may add more,
-- and replace or withdraw them), and each file belongs to one. Jobs from before have their one
-- manifest recorded here as number 0.
CREATE TABLE job_manifests (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    url       TEXT NOT NULL,
    withdrawn INTEGER NOT NULL DEFAULT 0,
    added_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);
INSERT INTO job_manifests (job_id, idx, url, added_at)
    SELECT id, 0, COALESCE(status_url, export_url), created_at FROM jobs
    WHERE id IN (SELECT DISTINCT job_id FROM job_files);
ALTER TABLE job_files ADD COLUMN manifest_idx INTEGER NOT NULL DEFAULT 0;
-- Whether more manifests may come; a job completes only once its plan is closed.
ALTER TABLE jobs ADD COLUMN plan_open INTEGER NOT NULL DEFAULT 1;
UPDATE jobs SET plan_open = 0 WHERE state IN ('importing', 'completed', 'failed');

-- Who runs a job: a lease held by one process until `lease_expires_at` (renewed by its
-- heartbeat), and a fencing token that every claim increments, so a process whose lease was
-- taken over cannot write as if it still held it. A cancel request is seen by the holder.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE jobs ADD COLUMN cancel_requested_at INTEGER;
