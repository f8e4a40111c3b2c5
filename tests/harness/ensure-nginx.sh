#!/usr/bin/env bash
# Make sure Debian's nginx is installed for the test suite (called by `make brokers`): the deploy
# tests check docker/nginx.conf with `nginx -t`, and the local topology e2e runs it on loopback.
# Installs the package only (as root); the service it ships is not started. With CI=true a
# missing nginx fails here; locally the tests that need it are skipped with a clear message.
set -euo pipefail

if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then
    echo "nginx: $( (/usr/sbin/nginx -v || nginx -v) 2>&1 | head -n1)"; exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "nginx: not installed and cannot install it here (needs root and apt-get)" >&2
    [[ "${CI:-}" == true ]] && exit 1
    exit 0
fi

echo "nginx: installing Debian's nginx"
export DEBIAN_FRONTEND=noninteractive
# Keep the package's init script from starting a daemon on port 80: a policy-rc.d that denies
# every start, removed again afterwards (only if we put it there).
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx >/dev/null
echo "nginx: $(/usr/sbin/nginx -v 2>&1)"
