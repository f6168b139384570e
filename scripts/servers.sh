# Sourced by scripts/test.sh and scripts/dev-stack.sh: installs the real servers the
# tests and the dev stack run (docs/operations.md, "Tests"), each only when it is
# missing.

ensure_servers() {
  # A NATS server with JetStream: Debian's 2.9.10.
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "installing nats-server (Debian package)"
    apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
  fi
  # An S3 server.
  if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "installing s3s-fs 0.14.1 (about 2 minutes, once)"
    cargo install s3s-fs@0.14.1 --locked --features binary --quiet
  fi
  # A Kafka-protocol broker; about 8 minutes to build, once.
  if ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu 0.6.0 (about 8 minutes, once)"
    cargo install tansu@0.6.0 --locked --features dynostore,libsql --quiet
  fi
}
