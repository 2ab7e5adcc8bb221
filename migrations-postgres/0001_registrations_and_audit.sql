-- The PostgreSQL schema (issue 15), built up store by store: registrations and the audit trail
-- first. Same columns and meanings as the SQLite migrations (migrations/), in PostgreSQL types.
CREATE TABLE providers (
    client_id          TEXT PRIMARY KEY,
    consumer_client_id TEXT NOT NULL,
    aud                TEXT NOT NULL,
    jwks               TEXT,
    jwks_uri           TEXT,
    scope              TEXT,
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    token_origins      TEXT NOT NULL DEFAULT '[]',
    file_origins       TEXT,
    token_endpoint     TEXT,
    name               TEXT
);

-- Refused pings are kept in a budget of their own (see migrations/0006).
CREATE TABLE audit_events (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    action  TEXT NOT NULL,
    actor   TEXT NOT NULL,
    subject TEXT,
    detail  TEXT,
    refusal BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX audit_events_by_class ON audit_events (refusal, id);
