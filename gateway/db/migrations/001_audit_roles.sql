-- Roles of the audit trail (cluster-wide, so created only if missing; NOLOGIN: grant them to login roles).
--   mgw_audit_writer   the gateway's writer: inserts records, moves chain heads, runs partition/retention functions
--   mgw_audit_reader   tenant-scoped reader (admin API): sees only rows of the tenant in `app.tenant` (RLS)
--   mgw_audit_auditor  verification and operations: reads every row (audit verify, dashboards)
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['mgw_audit_writer', 'mgw_audit_reader', 'mgw_audit_auditor'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created concurrently by another migration run on the same cluster
      END;
    END IF;
  END LOOP;
END
$$;
