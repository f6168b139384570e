#!/usr/bin/env bash
# The test command: installs what the end-to-end tests need (once; skipped when
# present), then runs every test. Tests start their own servers on free loopback
# ports in temporary directories and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$HOME/.cargo/bin:$PATH"

# Command-line tools the tests use as independent readers of the archive.
missing=()
for tool in zstd gzip sha256sum strace; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  apt-get update -qq && apt-get install -y -qq zstd gzip coreutils strace >/dev/null
fi

# docker-compose.yml is validated by Debian's docker-compose (no daemon needed).
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose (Debian package)"
  apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null
fi

# A real browser for the web console's tests: Debian's chromium, driven headless
# through chromedriver (WebDriver).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver (Debian packages)"
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# Real NATS, S3 and Kafka-protocol servers (see docs/operations.md, "Tests").
# shellcheck source=scripts/servers.sh
. scripts/servers.sh
ensure_servers

# Independent clients for the broker tests: they share no code with flow-archiver.
if ! python3 -c "import confluent_kafka, fastavro, nats, yaml, jsonschema, prometheus_client, kubernetes_validate, zstandard" >/dev/null 2>&1; then
  echo "installing confluent-kafka, fastavro, nats-py, PyYAML, jsonschema, prometheus-client, kubernetes-validate and zstandard (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check \
    "confluent-kafka==2.16.1" "fastavro==1.13.1" "nats-py==2.16.0" \
    "PyYAML==6.0.3" "jsonschema==4.26.0" "prometheus-client==0.26.0" \
    "kubernetes-validate==1.37.0" "zstandard==0.25.0"
fi

# S3 with Object Lock for the compliance tests: moto in server mode, and boto3 as the
# independent client that reads back what S3 holds.
if ! python3 -c "import moto.server, boto3" >/dev/null 2>&1; then
  echo "installing moto[server] and boto3 (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]==5.2.1" "boto3==1.43.11"
fi

# The GraphQL tests' independent client.
if ! python3 -c "import requests" >/dev/null 2>&1; then
  echo "installing requests (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "requests==2.34.2"
fi

cargo test --locked "$@"
