#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the ingress browser test (called by
# `make test`). Playwright drives it through executable_path: browsers are never downloaded.
# Without root, nothing is installed: the test fails with CI=true and is skipped otherwise.
set -euo pipefail

CHROMIUM="${PIXFLEET_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$CHROMIUM" ]]; then echo "chromium: $CHROMIUM"; exit 0; fi
if [[ "$(id -u)" != 0 ]]; then
    echo "chromium: $CHROMIUM missing and not root; apt-get install chromium" >&2
    exit 0
fi
echo "chromium: installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
if [[ -x "$CHROMIUM" ]]; then echo "chromium: $CHROMIUM"; else echo "chromium: not at $CHROMIUM" >&2; fi
