#!/usr/bin/env bash
# The test command of README.md, also run by CI (.ci/run). Installs what the tests need on a fresh
# machine, then runs the gate: rustfmt, clippy (warnings are errors), and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cluster tests start real nats-server and redis-server processes on free loopback ports; the
# console's tests drive a real headless Chromium through chromedriver.
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
# The Redis high-availability test fails a primary over with real Sentinels.
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The README's Quickstart runs as a test, curl lines included.
command -v curl >/dev/null || missing+=(curl)
# deploy/prometheus's rules are checked and unit-tested with promtool.
command -v promtool >/dev/null || missing+=(prometheus)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]} (Debian packages)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The interop tests drive agents built on the Python OpAMP client (plain HTTP), and agents that
# send their own metrics with the OpenTelemetry SDK's OTLP/HTTP exporter.
venv="target/interop-venv"
if ! "$venv/bin/python" -c 'import opentelemetry._opamp, opentelemetry.exporter.otlp.proto.http.metric_exporter' 2>/dev/null; then
  echo "==> installing opentelemetry-opamp-client and the OpenTelemetry SDK into $venv"
  mkdir -p target
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "opentelemetry-opamp-client==0.5b0" \
    "opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp-proto-http==1.45.2"
fi
export FLOTILLA_INTEROP_PYTHON="$PWD/$venv/bin/python"

# The container image and Kubernetes manifests: rendered, schema-validated, linted (checkov).
echo "==> deploy/ (scripts/check_deploy.sh)"
scripts/check_deploy.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
log="target/test-output.log"
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo's last line is often a doc-test summary of 0 tests; print the totals of the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
