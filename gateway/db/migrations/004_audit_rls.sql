-- Row-level security. FORCE makes the policies apply to the table owner too; superusers still bypass RLS, which
-- is why the admin API switches to mgw_audit_reader (SET LOCAL ROLE) for every query.
ALTER TABLE audit_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_records FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS audit_tenant_read ON audit_records;
-- current_setting(..., true) is NULL when app.tenant is unset, and NULL matches no row: no tenant, no rows
CREATE POLICY audit_tenant_read ON audit_records FOR SELECT TO mgw_audit_reader
  USING (tenant = current_setting('app.tenant', true));
DROP POLICY IF EXISTS audit_writer_insert ON audit_records;
CREATE POLICY audit_writer_insert ON audit_records FOR INSERT TO mgw_audit_writer WITH CHECK (true);
DROP POLICY IF EXISTS audit_auditor_read ON audit_records;
CREATE POLICY audit_auditor_read ON audit_records FOR SELECT TO mgw_audit_auditor USING (true);

DROP POLICY IF EXISTS audit_heads_writer ON audit_chain_heads;
CREATE POLICY audit_heads_writer ON audit_chain_heads FOR ALL TO mgw_audit_writer USING (true) WITH CHECK (true);
-- the owner runs the SECURITY DEFINER partition functions, which move chain anchors
DROP POLICY IF EXISTS audit_heads_owner ON audit_chain_heads;
CREATE POLICY audit_heads_owner ON audit_chain_heads FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS audit_heads_auditor ON audit_chain_heads;
CREATE POLICY audit_heads_auditor ON audit_chain_heads FOR SELECT TO mgw_audit_auditor USING (true);

-- The writer may add rows but never read, change or delete them; partitions are reachable only through the parent.
REVOKE ALL ON audit_records FROM PUBLIC;
REVOKE ALL ON audit_chain_heads FROM PUBLIC;
GRANT INSERT ON audit_records TO mgw_audit_writer;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO mgw_audit_writer;
GRANT SELECT ON audit_records TO mgw_audit_reader, mgw_audit_auditor;
GRANT SELECT ON audit_chain_heads TO mgw_audit_auditor;

REVOKE ALL ON FUNCTION audit_ensure_partitions(date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_drop_partitions_before(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_ensure_partitions(date, date) TO mgw_audit_writer;
GRANT EXECUTE ON FUNCTION audit_drop_partitions_before(date) TO mgw_audit_writer;
