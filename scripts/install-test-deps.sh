#!/usr/bin/env bash
# Install the real servers haul's store/integration tests run against (see tests/support/servers.py).
# Idempotent: installs only what is missing. Runs as root on Debian 12.
# Python packages are NOT installed here (the Makefile does the pip install).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(
    swift swift-proxy swift-account swift-container swift-object
    memcached nginx-light curl redis-server aria2 rclone rabbitmq-server
    chromium
)
AZURITE_VERSION="3.35.0" # 3.36+ needs Node >= 22

log() { printf 'install-test-deps: %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        log "need root to install: ${missing[*]}" >&2
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    log "apt packages already installed"
fi

# Debian's nginx/redis/memcached packages may try to start services; none are needed
# (the tests start their own instances on random ports).

# RabbitMQ is the one shared server: the broker tests use the machine's own on 127.0.0.1:5672
# (guest/guest), each in a vhost of its own (tests/support/rabbitmq.py). Start it if it is not
# running (machines of this kind start it before the session; a fresh one may not).
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    log "starting rabbitmq-server"
    rabbitmq-server -detached
    for _ in $(seq 120); do
        (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
        sleep 0.5
    done
    rabbitmqctl await_startup >/dev/null
fi

if [[ -x tests/node/node_modules/.bin/azurite-blob ]]; then
    log "azurite already installed"
else
    if ! command -v npm >/dev/null 2>&1; then
        log "npm not found; install Node.js >= 20 first" >&2
        exit 1
    fi
    log "npm install azurite@${AZURITE_VERSION}"
    mkdir -p tests/node
    npm install --prefix tests/node --no-audit --no-fund --loglevel=error \
        "azurite@${AZURITE_VERSION}" >/dev/null
fi

log "done"
