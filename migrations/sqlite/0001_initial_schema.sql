-- o2o-sidecar store, SQLite, version 1. Times are whole unix seconds (UTC).

-- One row per invoice: the payment, its DOKU request and the sweeper's schedule.
CREATE TABLE payments (
    invoice             TEXT    NOT NULL PRIMARY KEY,
    amount              INTEGER NOT NULL,
    channel             TEXT    NOT NULL,
    payment_code        TEXT,
    status              TEXT    NOT NULL,
    create_time         INTEGER NOT NULL,
    expire_time         INTEGER NOT NULL,
    pay_time            INTEGER,
    how_to_pay_url      TEXT,
    how_to_pay_api_url  TEXT,
    reusable            INTEGER NOT NULL CHECK (reusable IN (0, 1)),
    -- Empty for a payment created from a DOKU notification for an unknown invoice.
    fingerprint         TEXT    NOT NULL,
    idempotency_key     TEXT    UNIQUE,
    -- The first attempt's DOKU Request-Id and body, replayed byte for byte on retries.
    doku_request_id     TEXT,
    doku_request_body   BLOB,
    attempt_lease_until INTEGER,
    next_check_at       INTEGER,
    check_count         INTEGER NOT NULL DEFAULT 0,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE INDEX payments_due_for_check ON payments (next_check_at)
    WHERE status = 'PENDING' AND next_check_at IS NOT NULL;

-- The event log. AUTOINCREMENT: a seq is never reused, even after the newest rows are pruned.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    invoice         TEXT    NOT NULL REFERENCES payments (invoice),
    status          TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    payment_code    TEXT,
    channel         TEXT    NOT NULL,
    occur_time      INTEGER NOT NULL,
    source          TEXT    NOT NULL,
    doku_request_id TEXT,
    recorded_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX events_invoice ON events (invoice, status, occur_time);
CREATE INDEX events_recorded_at ON events (recorded_at);
-- One event at most per DOKU notification.
CREATE UNIQUE INDEX events_doku_request_id ON events (doku_request_id)
    WHERE doku_request_id IS NOT NULL;

-- Audit trail: every verified DOKU notification, whatever was made of it.
CREATE TABLE notifications (
    doku_request_id TEXT    NOT NULL PRIMARY KEY,
    received_at     INTEGER NOT NULL,
    headers         TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    verdict         TEXT    NOT NULL,
    verdict_detail  TEXT,
    invoice         TEXT,
    -- Not a foreign key: the audit row outlives the pruned event.
    event_seq       INTEGER
) STRICT;

CREATE INDEX notifications_invoice ON notifications (invoice);

-- Small named counters, e.g. pruned_through (the highest seq removed by retention).
CREATE TABLE meta (
    key   TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
