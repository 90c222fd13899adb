"""The built-in OAuth 2.1 authorization server for the gateway's own identities (off by default; docs/identity.md,
"Built-in authorization server"). A user signs in with one of their API keys; the access tokens it issues carry
that key's tenant, scopes and role, are bound to one route (RFC 8707), and die with the key."""
