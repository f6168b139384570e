#!/usr/bin/env bash
# Randomized SIGKILL soak (docs/reliability.md): `flow-archiver run` follows a stream
# of events and is killed with SIGKILL at a random moment, KILLS times, while more
# events keep arriving (some of them duplicates). Then it runs to the end and the
# invariants are checked: every terminal flow archived exactly once, with all its
# events, every object verified, nothing dead-lettered.
#
#   scripts/soak.sh [KILLS] [FLOWS_PER_ROUND]      default: 200 kills, 50 flows a round
#
# FLOW_ARCHIVER_BIN picks the binary (default: target/release/flow-archiver, built
# if missing). The end-to-end suite runs a short form (crash::randomized_sigkill_soak).
set -euo pipefail

kills=${1:-200}
per_round=${2:-50}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${FLOW_ARCHIVER_BIN:-$root/target/release/flow-archiver}
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --locked)
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
cat > flow-archiver.toml <<'EOF'
[state]
journal_file_bytes = 65536
[input]
batch_size = 32
[archive]
segment_max_flows = 20
[retention]
completed = "1s"
[scheduler]
interval = "100ms"
EOF

# Round R: PER flows of 3 events, interleaved, the second event sent twice.
round() {
  python3 - "$1" "$per_round" <<'PY'
import json, sys
r, per = int(sys.argv[1]), int(sys.argv[2])
for seq in (1, 2, 2, 3):
    for f in range(per):
        flow = f"soak-{r:04}-{f:03}"
        kind = "completed" if seq == 3 else "step"
        print(json.dumps({
            "specversion": "1.0", "id": f"{flow}-{seq}", "source": "/soak",
            "type": f"io.soak.flow.{kind}", "subject": flow, "tenant": f"t{f % 3}",
            "sequence": f"{seq:04}", "time": "2026-01-01T00:00:00Z",
            "data": {"step": seq, "pad": "x" * 200},
        }))
PY
}

started=$(date +%s)
: > events.jsonl
landed=0
for i in $(seq 1 "$kills"); do
  round "$i" >> events.jsonl
  "$bin" run --source file:events.jsonl > /dev/null 2>> soak.log &
  pid=$!
  # 50 ms to 1 s: at start-up, mid-ingest, mid-archive or idle.
  sleep "$(awk -v s="$RANDOM" 'BEGIN { printf "%.3f", 0.05 + (s % 951) / 1000 }')"
  if kill -9 "$pid" 2>/dev/null; then landed=$((landed + 1)); fi
  wait "$pid" 2>/dev/null || true
  pid=
done

"$bin" run --source file:events.jsonl --until-idle 3s > /dev/null 2>> soak.log
"$bin" verify --json > verify.json

python3 - "$kills" "$per_round" <<'PY'
import json, sys
kills, per = int(sys.argv[1]), int(sys.argv[2])
expected = {f"t{f % 3}/soak-{r:04}-{f:03}/1" for r in range(1, kills + 1) for f in range(per)}
seen = {}
for line in open("data/events/archived.jsonl"):
    rec = json.loads(line)
    key = rec["partitionkey"]
    assert key not in seen, f"{key} published twice"
    seen[key] = rec["data"]["event_count"]
missing = expected - seen.keys()
assert not missing, f"{len(missing)} flows never archived, e.g. {sorted(missing)[:3]}"
extra = seen.keys() - expected
assert not extra, f"unexpected parts: {sorted(extra)[:3]}"
short = [k for k, n in seen.items() if n != 3]
assert not short, f"{len(short)} parts lost or doubled events, e.g. {short[:3]}"
verified = json.load(open("verify.json"))
assert verified["flow_parts"] == len(expected), verified
dead = open("data/dead-letter.jsonl").read().strip() if __import__("os").path.exists("data/dead-letter.jsonl") else ""
assert not dead, "dead letters: " + dead[:300]
PY
echo "soak: $landed SIGKILLs landed (of $kills), $((kills * per_round)) flows archived exactly once with all events, every object verified, in $(( $(date +%s) - started )) s"
