# Sourced by scripts/test.sh and scripts/dev-stack.sh: installs the real servers the
# tests and the dev stack run (docs/operations.md, "Tests"), each only when it is
# missing.

# The servers are built with one codegen unit per crate: on two cores their many
# crates compile side by side anyway, and this skips a thin-local LTO pass per
# crate. tansu took 1,266 CPU s (807 s) that way here; with the defaults, s3s-fs and
# tansu together took 1,948 CPU s.
ensure_servers() {
  # A NATS server with JetStream: Debian's 2.9.10.
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "installing nats-server (Debian package)"
    apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
  fi
  # PostgreSQL for the shared state backend: Debian's package, started by the tests
  # themselves (never the system service).
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing postgresql (Debian package)"
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  # An S3 server.
  if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "installing s3s-fs 0.14.1 (a few minutes, once)"
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
      cargo install s3s-fs@0.14.1 --locked --features binary --quiet
  fi
  # A Kafka-protocol broker.
  if ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu 0.6.0 (about 13 minutes on 2 cores, once)"
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
      cargo install tansu@0.6.0 --locked --features dynostore,libsql --quiet
  fi
}
