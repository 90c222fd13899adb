#!/usr/bin/env bash
# promtool (from Debian's `prometheus` package) for the deployment checks (tests/integration/test_deploy.py runs
# `promtool check rules` and `promtool check config`). Installs it when missing and the package manager is usable.
set -uo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "installing promtool (apt-get install prometheus)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
  # the package starts a Prometheus server where an init system runs it; the checks need only the binary
  command -v systemctl >/dev/null 2>&1 && systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null 2>&1 || {
  echo "promtool is not installed and could not be installed: install Debian's 'prometheus' package" >&2
  exit 1
}
