-- Jobs, their plans and files, and the leases replicas run them under (see migrations/0001-0007
-- for what each column means); the replay cache and the secrets every replica must share.
CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    client_id           TEXT NOT NULL,
    export_type         TEXT NOT NULL,
    export_url          TEXT NOT NULL,
    kickoff             TEXT NOT NULL,
    state               TEXT NOT NULL,
    status_url          TEXT,
    progress            TEXT,
    failure             TEXT,
    created_at          BIGINT NOT NULL,
    completed_at        BIGINT,
    touched_at          BIGINT NOT NULL DEFAULT 0,
    kickoff_started_at  BIGINT,
    plan_open           BOOLEAN NOT NULL DEFAULT TRUE,
    lease_owner         TEXT,
    lease_token         BIGINT NOT NULL DEFAULT 0,
    lease_expires_at    BIGINT,
    cancel_requested_at BIGINT,
    throughput          TEXT,
    -- Claims of a lease that had lapsed under another owner; capped (a job that kills every
    -- replica that runs it must not go round for ever).
    takeovers           BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_by_age ON jobs (created_at);

CREATE TABLE job_manifests (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx       BIGINT NOT NULL,
    url       TEXT NOT NULL,
    withdrawn BOOLEAN NOT NULL DEFAULT FALSE,
    added_at  BIGINT NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE job_files (
    job_id             TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx                BIGINT NOT NULL,
    manifest_idx       BIGINT NOT NULL DEFAULT 0,
    kind               TEXT NOT NULL,
    resource_type      TEXT NOT NULL,
    url                TEXT NOT NULL,
    requires_token     BOOLEAN NOT NULL DEFAULT FALSE,
    name               TEXT NOT NULL,
    state              TEXT NOT NULL,
    resources          BIGINT NOT NULL DEFAULT 0,
    bytes              BIGINT NOT NULL DEFAULT 0,
    outcome            TEXT,
    provider_errors    BIGINT NOT NULL DEFAULT 0,
    type_counts        TEXT,
    expected_resources BIGINT,
    PRIMARY KEY (job_id, idx)
);

-- Client-assertion ids seen by any replica, kept until the assertion would have expired.
CREATE TABLE used_jti (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX used_jti_by_expiry ON used_jti (expires_at);

-- Our signing key, the access-token secret and the admin token when configuration gives none:
-- written once by the first replica to start, read by every other (never regenerated per replica).
CREATE TABLE shared_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
