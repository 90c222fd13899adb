-- One row per operation, partitioned by day (UTC) on `ts`, the time the record was made.
-- The primary key includes the partition key (PostgreSQL requires it); `id` is a random UUID, so (id, ts) is
-- unique in practice and makes replays idempotent (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE IF NOT EXISTS audit_records (
  id                  uuid             NOT NULL,
  ts                  timestamptz      NOT NULL,
  started_at          timestamptz      NOT NULL,
  request_id          text             NOT NULL,
  tenant              text,
  principal           text,
  key_id              text,
  auth_method         text,
  client_ip           text,
  server              text             NOT NULL,
  upstream            text,
  transport           text             NOT NULL,
  http_method         text,
  session_hash        text,
  rpc_method          text,
  rpc_id              text,
  tool                text,
  resource_uri        text,
  decision            text             NOT NULL,
  stage               text,
  reason              text,
  http_status         integer,
  rpc_error_code      integer,
  upstream_status     integer,
  latency_ms          double precision,
  upstream_latency_ms double precision,
  bytes_in            bigint           NOT NULL DEFAULT 0,
  bytes_out           bigint           NOT NULL DEFAULT 0,
  risk                text             NOT NULL,
  shadow              jsonb,
  arguments           jsonb,
  notes               jsonb,
  writer_id           text             NOT NULL,
  seq                 bigint           NOT NULL,
  prev_hash           text             NOT NULL,
  hash                text             NOT NULL,
  PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX IF NOT EXISTS audit_records_tenant_ts ON audit_records (tenant, ts DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_records_server_ts ON audit_records (server, ts DESC);
CREATE INDEX IF NOT EXISTS audit_records_writer_seq ON audit_records (writer_id, seq);

-- The last record of each writer's chain (moved by the writer in the same transaction as its rows) and the
-- anchor (the last record removed by retention), so `audit verify` can tell a cut-off tail or head from retention.
CREATE TABLE IF NOT EXISTS audit_chain_heads (
  writer_id   text        PRIMARY KEY,
  last_seq    bigint      NOT NULL DEFAULT 0,
  last_hash   text        NOT NULL DEFAULT repeat('0', 64),
  anchor_seq  bigint      NOT NULL DEFAULT 0,
  anchor_hash text        NOT NULL DEFAULT repeat('0', 64),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
