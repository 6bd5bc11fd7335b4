-- o2o-sidecar store, PostgreSQL, version 4: the trace that created a payment.
--
-- The W3C `traceparent` of the span that created the payment (the gRPC call's), or NULL when
-- there was none (no OpenTelemetry layer, or the payment came from a DOKU notification). A
-- notification for the payment links its span to this trace.
ALTER TABLE payments ADD COLUMN trace_context TEXT;
