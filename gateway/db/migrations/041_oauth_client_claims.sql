-- A registered OAuth client is "claimed" when it is first issued an authorization code (a user signed in and
-- approved it). Unclaimed clients older than oauth.unclaimed_client_seconds are deleted, so a registration flood
-- cannot keep mgw_oauth_clients at max_clients and shut registration for everyone (gateway/oauth/pgstore.py).
ALTER TABLE mgw_oauth_clients ADD COLUMN IF NOT EXISTS claimed_at timestamptz;
CREATE INDEX IF NOT EXISTS mgw_oauth_clients_unclaimed ON mgw_oauth_clients (created_at) WHERE claimed_at IS NULL;
