#!/usr/bin/env bash
# Make sure a RabbitMQ answers on 127.0.0.1:5672 for the test suite (called by `make test`).
# Uses one that already runs; else installs Debian's rabbitmq-server (as root) and starts it.
# Skipped when PIXFLEET_TEST_AMQP_URL points at a broker of your own.
set -euo pipefail

if [[ -n "${PIXFLEET_TEST_AMQP_URL:-}" ]]; then
    echo "rabbitmq: using PIXFLEET_TEST_AMQP_URL"; exit 0
fi
answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if answers; then echo "rabbitmq: already running on 127.0.0.1:5672"; exit 0; fi

if ! command -v rabbitmq-server >/dev/null || ! command -v amqp-publish >/dev/null; then
    if [[ "$(id -u)" != 0 ]]; then
        echo "rabbitmq: not installed and not root; install rabbitmq-server amqp-tools" >&2
        exit 0   # the test fixtures fail (CI) or skip (locally) with a clear message
    fi
    echo "rabbitmq: installing rabbitmq-server and amqp-tools"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server amqp-tools >/dev/null
fi

if ! answers; then
    echo "rabbitmq: starting the default node"
    rabbitmq-server -detached
    for _ in $(seq 1 60); do answers && break; sleep 1; done
    timeout 120 rabbitmqctl await_startup >/dev/null
fi
answers && echo "rabbitmq: running on 127.0.0.1:5672"
