-- o2o-sidecar store, PostgreSQL, version 5: how to pay a code, as data.
--
-- The instructions DOKU's how-to-pay API listed when the code was issued, as this store's JSON
-- (an array of {"channel", "language", "steps": [..]}), written in the transaction that records
-- the code; NULL when there are none (not fetched, not allowed, or the fetch failed). TEXT, not
-- JSONB: the store never queries inside it, and both backends return the same text.
ALTER TABLE payments ADD COLUMN instructions TEXT;
