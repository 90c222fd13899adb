-- State of the built-in OAuth authorization server (gateway/oauth/, off by default). Codes, refresh tokens and
-- client secrets are stored as SHA-256 hashes only; `doc` is the grant (key id, tenant, scopes, route, family).
CREATE TABLE IF NOT EXISTS mgw_oauth_clients (
  client_id   text        PRIMARY KEY CHECK (client_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
  doc         jsonb       NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS mgw_oauth_codes (
  code_hash   text        PRIMARY KEY CHECK (code_hash ~ '^[0-9a-f]{64}$'),
  family      text        NOT NULL,
  doc         jsonb       NOT NULL,
  expires_at  timestamptz NOT NULL,
  used_at     timestamptz,
  revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS mgw_oauth_codes_family ON mgw_oauth_codes (family);
CREATE INDEX IF NOT EXISTS mgw_oauth_codes_expires ON mgw_oauth_codes (expires_at);

CREATE TABLE IF NOT EXISTS mgw_oauth_refresh_tokens (
  token_hash  text        PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
  family      text        NOT NULL,
  doc         jsonb       NOT NULL,
  expires_at  timestamptz NOT NULL,
  used_at     timestamptz,
  revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS mgw_oauth_refresh_family ON mgw_oauth_refresh_tokens (family);
CREATE INDEX IF NOT EXISTS mgw_oauth_refresh_expires ON mgw_oauth_refresh_tokens (expires_at);
