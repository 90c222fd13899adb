#!/usr/bin/env bash
# promtool (from Debian's `prometheus` package) for the deployment checks (tests/integration/test_deploy.py runs
# `promtool check rules`, `promtool check config` and `promtool test rules`). Installs it when missing and the
# package manager is usable; run by `make promtool` (and so by `make services` and `make test`).
set -uo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "installing promtool (apt-get install prometheus)"
  # the package would start a Prometheus server through invoke-rc.d; the checks need only the binary, so forbid
  # service starts for the install (policy-rc.d exit 101) unless the machine has its own policy already
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
  [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d && trap - EXIT
  # where systemd runs, the unit is enabled all the same: keep it off
  command -v systemctl >/dev/null 2>&1 && systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null 2>&1 || {
  echo "promtool is not installed and could not be installed: install Debian's 'prometheus' package" >&2
  exit 1
}
