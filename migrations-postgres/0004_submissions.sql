-- Bulk Submit: a submission is one job (its plan holds the submission's manifests), named by the
-- submitting client and its submissionId. Each request that names a manifest (or replaces or
-- withdraws one) is kept in order until the job has fetched that manifest into its plan.
CREATE TABLE submissions (
    client_id        TEXT NOT NULL,
    submission_id    TEXT NOT NULL,
    job_id           TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    submitter_system TEXT,
    submitter_value  TEXT NOT NULL,
    status           TEXT NOT NULL,
    fhir_base_url    TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (client_id, submission_id)
);
CREATE TABLE submission_manifests (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    manifest_url TEXT,
    replaces_url TEXT,
    state        TEXT NOT NULL DEFAULT 'pending',
    outcome      TEXT,
    added_at     BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
-- The Bulk Submit submitter a registration speaks for (an Identifier agreed out of band): a
-- submission naming another is refused.
ALTER TABLE providers ADD COLUMN submitter_system TEXT;
ALTER TABLE providers ADD COLUMN submitter_value TEXT;
