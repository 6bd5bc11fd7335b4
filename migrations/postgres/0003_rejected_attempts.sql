-- o2o-sidecar store, PostgreSQL, version 3: a definitive DOKU rejection frees the invoice.
--
-- A draft whose DOKU request was definitively rejected (a 4xx meaning "not processed", and no
-- attempt of the payment ever had an unknown outcome) carries DOKU's status and message; a
-- different request for the invoice may then replace it under a new Request-Id. A draft any
-- of whose attempts had an unknown outcome (timeout, dropped answer, abandoned lease) stays
-- bound to its Request-Id for good (`outcome_unknown`).
ALTER TABLE payments ADD COLUMN rejected_http_status BIGINT;
ALTER TABLE payments ADD COLUMN rejected_message TEXT;
ALTER TABLE payments ADD COLUMN outcome_unknown BOOLEAN NOT NULL DEFAULT FALSE;

-- Audit trail of attempts DOKU rejected: kept when the draft is replaced.
CREATE TABLE payment_attempts (
    doku_request_id TEXT    NOT NULL PRIMARY KEY,
    invoice         TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    idempotency_key TEXT,
    request_body    BYTEA   NOT NULL,
    -- 'REJECTED' (the only outcome kept here for now).
    outcome         TEXT    NOT NULL,
    http_status     BIGINT  NOT NULL,
    message         TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    ended_at        BIGINT  NOT NULL
);

CREATE INDEX payment_attempts_invoice ON payment_attempts (invoice, ended_at);
