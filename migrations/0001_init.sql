-- Registrations of data providers (who may ping us) and the jobs they start.
CREATE TABLE providers (
    client_id          TEXT PRIMARY KEY,
    consumer_client_id TEXT NOT NULL,
    aud                TEXT NOT NULL,
    jwks               TEXT,
    jwks_uri           TEXT,
    scope              TEXT,
    created_at         INTEGER NOT NULL,
    revoked_at         INTEGER
);

CREATE TABLE jobs (
    id                    TEXT PRIMARY KEY,
    client_id             TEXT NOT NULL,
    export_type           TEXT NOT NULL,
    export_url            TEXT NOT NULL,
    kickoff               TEXT NOT NULL,
    state                 TEXT NOT NULL,
    status_url            TEXT,
    progress              TEXT,
    failure               TEXT,
    created_at            INTEGER NOT NULL,
    completed_at          INTEGER,
    -- Last sign of life of a running job (the reaper removes jobs silent for 2 x JOBS_MAX_AGE).
    touched_at            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE job_files (
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    url           TEXT NOT NULL,
    -- From the manifest page that listed the file: send our token only when it says so.
    requires_token INTEGER NOT NULL DEFAULT 0,
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,
    resources     INTEGER NOT NULL DEFAULT 0,
    bytes         INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT,
    PRIMARY KEY (job_id, idx)
);

-- Client-assertion ids seen, kept until the assertion would have expired (replay protection).
CREATE TABLE used_jti (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
