-- Summaries. security_invoker: the caller's row-level security applies, so a tenant reader sees its own only.

CREATE OR REPLACE VIEW audit_server_summary WITH (security_invoker = true) AS
SELECT
  date_trunc('hour', ts)                                                        AS hour,
  tenant,
  server,
  count(*)                                                                      AS requests,
  count(*) FILTER (WHERE decision = 'refused')                                  AS refused,
  count(*) FILTER (WHERE decision = 'error' OR upstream_status >= 500)          AS errors,
  avg(latency_ms)                                                               AS avg_latency_ms,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)                       AS p50_latency_ms,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)                      AS p95_latency_ms,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY upstream_latency_ms)             AS p95_upstream_latency_ms
FROM audit_records
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW audit_tenant_usage WITH (security_invoker = true) AS
SELECT
  date_trunc('day', ts)                               AS day,
  tenant,
  count(*)                                            AS requests,
  count(*) FILTER (WHERE rpc_method = 'tools/call')   AS tool_calls,
  count(*) FILTER (WHERE decision = 'refused')        AS refused,
  count(DISTINCT principal)                           AS principals,
  sum(bytes_in)                                       AS bytes_in,
  sum(bytes_out)                                      AS bytes_out
FROM audit_records
GROUP BY 1, 2;

GRANT SELECT ON audit_server_summary, audit_tenant_usage TO mgw_audit_reader, mgw_audit_auditor;
