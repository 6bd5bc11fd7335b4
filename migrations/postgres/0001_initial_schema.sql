-- o2o-sidecar store, PostgreSQL, version 1. Times are whole unix seconds (UTC), as in the
-- SQLite schema, so that both backends store and return exactly the same values.

-- One row per invoice: the payment, its DOKU request and the sweeper's schedule.
CREATE TABLE payments (
    invoice             TEXT    NOT NULL PRIMARY KEY,
    amount              BIGINT  NOT NULL,
    channel             TEXT    NOT NULL,
    payment_code        TEXT,
    status              TEXT    NOT NULL,
    create_time         BIGINT  NOT NULL,
    expire_time         BIGINT  NOT NULL,
    pay_time            BIGINT,
    how_to_pay_url      TEXT,
    how_to_pay_api_url  TEXT,
    reusable            BOOLEAN NOT NULL,
    -- Empty for a payment created from a DOKU notification for an unknown invoice.
    fingerprint         TEXT    NOT NULL,
    idempotency_key     TEXT    UNIQUE,
    -- The first attempt's DOKU Request-Id and body, replayed byte for byte on retries.
    doku_request_id     TEXT,
    doku_request_body   BYTEA,
    attempt_lease_until BIGINT,
    next_check_at       BIGINT,
    check_count         BIGINT  NOT NULL DEFAULT 0,
    updated_at          BIGINT  NOT NULL
);

CREATE INDEX payments_due_for_check ON payments (next_check_at)
    WHERE status = 'PENDING' AND next_check_at IS NOT NULL;

-- The event log. Appends are serialized by a transaction-level advisory lock (see
-- src/store/postgres.rs), so seq order is commit order and a reader never sees a gap fill in.
CREATE TABLE events (
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice         TEXT    NOT NULL REFERENCES payments (invoice),
    status          TEXT    NOT NULL,
    amount          BIGINT  NOT NULL,
    payment_code    TEXT,
    channel         TEXT    NOT NULL,
    occur_time      BIGINT  NOT NULL,
    source          TEXT    NOT NULL,
    doku_request_id TEXT,
    recorded_at     BIGINT  NOT NULL
);

CREATE INDEX events_invoice ON events (invoice, status, occur_time);
CREATE INDEX events_recorded_at ON events (recorded_at);
-- One event at most per DOKU notification.
CREATE UNIQUE INDEX events_doku_request_id ON events (doku_request_id)
    WHERE doku_request_id IS NOT NULL;

-- Audit trail: every verified DOKU notification, whatever was made of it.
CREATE TABLE notifications (
    doku_request_id TEXT    NOT NULL PRIMARY KEY,
    received_at     BIGINT  NOT NULL,
    headers         TEXT    NOT NULL,
    body            BYTEA   NOT NULL,
    verdict         TEXT    NOT NULL,
    verdict_detail  TEXT,
    invoice         TEXT,
    -- Not a foreign key: the audit row outlives the pruned event.
    event_seq       BIGINT
);

CREATE INDEX notifications_invoice ON notifications (invoice);

-- Small named counters, e.g. pruned_through (the highest seq removed by retention).
CREATE TABLE meta (
    key   TEXT   NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);
