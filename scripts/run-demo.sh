#!/usr/bin/env bash
# `make run`: the example upstream MCP server in the background, the gateway in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-9001}"
.venv/bin/python -m examples.example_server --port "$port" &
example_pid=$!
trap 'kill $example_pid 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 50); do
  # open and close a connection without sending anything (a stray byte makes uvicorn log a bad request)
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "example upstream on http://127.0.0.1:$port/mcp (pid $example_pid); gateway on http://127.0.0.1:${MGW_PORT:-8080}/mcp/example (and /mcp/example-stdio: the same server as a stdio process per session)"
.venv/bin/mcp-gateway run --config config.yaml
