-- Who did what: registrations made and revoked, jobs cancelled and deleted, pings refused. The
-- newest events are kept (audit.rs: 10,000; trimmed on insert), so a flood of refusals only rotates.
CREATE TABLE audit_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    action  TEXT NOT NULL,
    actor   TEXT NOT NULL,
    subject TEXT,
    detail  TEXT
);
