-- o2o-sidecar store, SQLite, version 4: how to pay a code, as data.
--
-- The instructions DOKU's how-to-pay API listed when the code was issued, as this store's JSON
-- (an array of {"channel", "language", "steps": [..]}), written in the transaction that records
-- the code; NULL when there are none (not fetched, not allowed, or the fetch failed).
ALTER TABLE payments ADD COLUMN instructions TEXT;
