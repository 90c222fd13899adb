-- Daily partitions: created ahead by the writer, dropped by the retention job. SECURITY DEFINER so the writer
-- role needs no DDL rights of its own; search_path is pinned to the schema the migration ran in.

CREATE OR REPLACE FUNCTION audit_partition_name(day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'audit_records_p' || to_char(day, 'YYYYMMDD') $$;

CREATE OR REPLACE FUNCTION audit_ensure_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  d date := first_day;
  created integer := 0;
  part text;
BEGIN
  IF last_day - first_day > 400 THEN
    RAISE EXCEPTION 'refusing to create more than 400 partitions at once';
  END IF;
  WHILE d <= last_day LOOP
    part := audit_partition_name(d);
    IF to_regclass(part) IS NULL THEN
      -- two writers may race for the same day: serialize, then re-check
      PERFORM pg_advisory_xact_lock(hashtext('mgw_audit_partitions'));
      IF to_regclass(part) IS NULL THEN
        EXECUTE format(
          'CREATE TABLE %I PARTITION OF audit_records FOR VALUES FROM (%L) TO (%L)',
          part, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
        created := created + 1;
      END IF;
    END IF;
    d := d + 1;
  END LOOP;
  RETURN created;
END
$$;

-- Drops every daily partition that ends on or before `cutoff` (records older than the retention policy).
-- Before a partition goes, each writer's chain anchor moves to the last record it removes, so the first
-- remaining record still verifies.
CREATE OR REPLACE FUNCTION audit_drop_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  part record;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('mgw_audit_partitions'));
  FOR part IN
    SELECT c.relname AS name, to_date(substr(c.relname, 16), 'YYYYMMDD') AS day
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.oid = 'audit_records'::regclass AND c.relname ~ '^audit_records_p[0-9]{8}$'
    ORDER BY 2
  LOOP
    EXIT WHEN part.day + 1 > cutoff;
    EXECUTE format(
      'INSERT INTO audit_chain_heads AS h (writer_id, last_seq, last_hash, anchor_seq, anchor_hash) '
      'SELECT DISTINCT ON (writer_id) writer_id, seq, hash, seq, hash FROM %I ORDER BY writer_id, seq DESC '
      'ON CONFLICT (writer_id) DO UPDATE SET anchor_seq = EXCLUDED.anchor_seq, anchor_hash = EXCLUDED.anchor_hash '
      'WHERE h.anchor_seq < EXCLUDED.anchor_seq', part.name);
    EXECUTE format('DROP TABLE %I', part.name);
    RETURN NEXT part.name;
  END LOOP;
END
$$;
