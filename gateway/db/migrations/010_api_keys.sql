-- API keys of the production key store (the embedded default keeps them in policies/keys.yaml).
-- Only the keyed hash is stored: HMAC-SHA256(server secret, whole key string), never the secret.
CREATE TABLE IF NOT EXISTS mgw_api_keys (
  id           text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9]{1,64}$'),
  hash         text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  tenant       text        NOT NULL,
  scopes       text[]      NOT NULL DEFAULT ARRAY['read']::text[]
                           CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[]),
  role         text        NOT NULL DEFAULT 'user',
  allow_ips    cidr[]      NOT NULL DEFAULT ARRAY[]::cidr[],
  tools_allow  text[]      NOT NULL DEFAULT ARRAY[]::text[],
  tools_deny   text[]      NOT NULL DEFAULT ARRAY[]::text[],
  description  text        NOT NULL DEFAULT '',
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz,
  revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS mgw_api_keys_tenant ON mgw_api_keys (tenant);

-- Usage of every key (PostgreSQL and keys.yaml ones), written in batches by each gateway process:
-- counts are added, never overwritten, so several replicas can flush into the same row.
CREATE TABLE IF NOT EXISTS mgw_api_key_usage (
  key_id        text        PRIMARY KEY,
  request_count bigint      NOT NULL DEFAULT 0,
  last_used_at  timestamptz NOT NULL
);
