-- What a running job has received so far, files in progress included, written by the process that
-- runs it every couple of seconds, so that every replica and every view tells the same progress.
CREATE TABLE job_live (
    job_id     TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    bytes      INTEGER NOT NULL,
    resources  INTEGER NOT NULL,
    -- The files downloading then (JSON: index, type, bytes, resources).
    files      TEXT NOT NULL,
    at_ms      INTEGER NOT NULL
);
