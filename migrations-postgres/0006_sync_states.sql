-- Incremental sync: what each export of each provider came to last. A source is one export
-- (its URL with its _type and _typeFilter); `since` is the transactionTime of its last export
-- that completed with every file imported, where the next pull of it may start (`_since`).
ALTER TABLE jobs ADD COLUMN transaction_time TEXT;
CREATE TABLE sync_states (
    client_id       TEXT NOT NULL,
    source          TEXT NOT NULL,
    export_url      TEXT NOT NULL,
    types           TEXT,
    type_filters    TEXT,
    since           TEXT,
    last_success_at BIGINT,
    last_job_id     TEXT NOT NULL,
    last_result     TEXT NOT NULL,
    last_at         BIGINT NOT NULL,
    files           BIGINT NOT NULL,
    failed_files    BIGINT NOT NULL,
    resources       BIGINT NOT NULL,
    PRIMARY KEY (client_id, source)
);
