#!/usr/bin/env bash
# The docker-compose topology from local binaries, without Docker:
#
#   scripts/dev-stack.sh up       start everything (installing what is missing)
#   scripts/dev-stack.sh status   what runs, where
#   scripts/dev-stack.sh down     stop everything (data stays in .dev-stack/)
#
# Started on loopback: nats-server with JetStream, tansu (a Kafka-protocol broker) with
# the topics created, s3s-fs (an S3 server; bucket flow-archive), and two archivers —
# one reading Kafka, one reading NATS — both archiving to that bucket and serving their
# API and metrics. Data, logs and pid files live under $DEV_STACK_DIR (default
# ./.dev-stack). Ports are overridable: DEV_NATS_PORT, DEV_KAFKA_PORT, DEV_S3_PORT,
# DEV_API_KAFKA_PORT, DEV_API_NATS_PORT. FLOW_ARCHIVER_BIN picks the binary (default: a
# release build of this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

DIR="${DEV_STACK_DIR:-$PWD/.dev-stack}"
NATS_PORT="${DEV_NATS_PORT:-14222}"
KAFKA_PORT="${DEV_KAFKA_PORT:-19092}"
S3_PORT="${DEV_S3_PORT:-19000}"
API_KAFKA_PORT="${DEV_API_KAFKA_PORT:-18080}"
API_NATS_PORT="${DEV_API_NATS_PORT:-18081}"
S3_KEY=dev-access
S3_SECRET=dev-secret-key
SERVICES=(nats kafka s3 archiver-kafka archiver-nats)

# shellcheck source=scripts/servers.sh
. scripts/servers.sh

install_missing() {
  ensure_servers
  if [ -z "${FLOW_ARCHIVER_BIN:-}" ]; then
    echo "building flow-archiver (release)"
    cargo build --release --locked --quiet
    FLOW_ARCHIVER_BIN="$PWD/target/release/flow-archiver"
  fi
}

pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }

running() {
  local pid
  pid="$(pid_of "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# start NAME COMMAND...: runs it in the background, logging to $DIR/NAME.log.
start() {
  local name="$1"
  shift
  if running "$name"; then
    echo "$name already running (pid $(pid_of "$name"))"
    return
  fi
  nohup "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

wait_port() {
  local name="$1" port="$2"
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    if ! running "$name"; then
      echo "$name exited; its log:" >&2
      tail -n 20 "$DIR/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$name did not listen on $port within 30 s" >&2
  return 1
}

archiver_config() {
  local broker="$1" port="$2"
  local section
  if [ "$broker" = kafka ]; then
    section="[kafka]
brokers = \"127.0.0.1:$KAFKA_PORT\"
topics = [\"flows.events\"]
group_id = \"flow-archiver\"
archived_topic = \"flow.archived\"
dead_letter_topic = \"flows.events.dlq\""
  else
    section="[nats]
servers = \"nats://127.0.0.1:$NATS_PORT\""
  fi
  cat <<EOF
# Written by scripts/dev-stack.sh.
[retention]
completed = "10s"
failed = "10s"
error = "10s"
cancelled = "10s"
timed_out = "10s"

[scheduler]
interval = "1s"

[archive]
bucket = "flow-archive"
endpoint = "http://127.0.0.1:$S3_PORT"
region = "us-east-1"
prefix = "$broker"

[publish]
destination = "$broker"

[dead_letter]
destination = "$broker"

$section

[api]
listen = "127.0.0.1:$port"
EOF
}

up() {
  install_missing
  mkdir -p "$DIR/nats" "$DIR/s3/flow-archive" "$DIR/archiver-kafka" "$DIR/archiver-nats"

  start nats nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DIR/nats"
  start s3 s3s-fs --host 127.0.0.1 --port "$S3_PORT" \
    --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$DIR/s3"
  (cd "$DIR" && RUST_LOG=warn start kafka tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/)
  wait_port nats "$NATS_PORT"
  wait_port s3 "$S3_PORT"
  wait_port kafka "$KAFKA_PORT"
  for topic in flows.events:3 flow.archived:1 flows.events.dlq:1 flow.audit:1; do
    tansu topic create "${topic%%:*}" --partitions "${topic##*:}" \
      --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 || true
  done

  for broker in kafka nats; do
    local port=$API_KAFKA_PORT
    [ "$broker" = nats ] && port=$API_NATS_PORT
    local home="$DIR/archiver-$broker"
    archiver_config "$broker" "$port" >"$home/flow-archiver.toml"
    (cd "$home" && AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" \
      AWS_DEFAULT_REGION=us-east-1 RUST_LOG="${RUST_LOG:-info}" \
      start "archiver-$broker" "$FLOW_ARCHIVER_BIN" run --source "$broker")
    wait_port "archiver-$broker" "$port"
  done
  status
}

status() {
  local any=1
  for name in "${SERVICES[@]}"; do
    if running "$name"; then
      printf '%-16s running (pid %s)\n' "$name" "$(pid_of "$name")"
      any=0
    else
      printf '%-16s stopped\n' "$name"
    fi
  done
  cat <<EOF

NATS      nats://127.0.0.1:$NATS_PORT      (events: stream FLOW_EVENTS, subjects flows.events.>)
Kafka     127.0.0.1:$KAFKA_PORT            (events: topic flows.events)
S3        http://127.0.0.1:$S3_PORT        (bucket flow-archive; key $S3_KEY, secret $S3_SECRET)
API       http://127.0.0.1:$API_KAFKA_PORT (Kafka archiver)   http://127.0.0.1:$API_NATS_PORT (NATS archiver)
Data      $DIR
EOF
  return $any
}

down() {
  # Archivers first (they drain and commit on SIGTERM), then the servers.
  for name in archiver-kafka archiver-nats kafka s3 nats; do
    local pid
    pid="$(pid_of "$name")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name.pid"
  done
  echo "stopped (data kept in $DIR)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
