-- The W3C trace and span id of the gateway's span for the request (tracing on), so a trace leads to its audit
-- record and back. NULL when the request was not traced: such a record carries neither field, and its hash is
-- computed without them (gateway/audit/record.py TRACE_FIELDS). Added to the partitioned parent, so every
-- partition, existing or future, has them. Run before starting a gateway of this version with `sink: postgres`.
ALTER TABLE audit_records
  ADD COLUMN IF NOT EXISTS trace_id text,
  ADD COLUMN IF NOT EXISTS span_id  text;

CREATE INDEX IF NOT EXISTS audit_records_trace ON audit_records (trace_id) WHERE trace_id IS NOT NULL;
