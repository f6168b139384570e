#!/usr/bin/env bash
# Runs one coverage-guided fuzz target (fuzz/, AFL++ through afl.rs on the stable
# toolchain) for MINUTES, then folds the inputs that reached new code into its
# corpus (fuzz/corpus/TARGET, kept in the repository). A crash fails the script and
# its input is left in fuzz/out/TARGET/default/crashes.
#
#   scripts/fuzz.sh TARGET [MINUTES]     targets: decode_event binding archive_reader config
#
# Installs cargo-afl (and builds AFL++) on first use.
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh TARGET [MINUTES]}
minutes=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
command -v cargo-afl >/dev/null || cargo install cargo-afl --locked
cargo afl build --release --bin "$target"
out="out/$target"
rm -rf "$out"
mkdir -p out
# No frequency governor or core dump helper to tune inside a container.
AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
  cargo afl fuzz -i "corpus/$target" -o "$out" -V $((minutes * 60)) \
  "target/release/$target" > "$out.log" 2>&1 || { tail -20 "$out.log"; exit 1; }
stats="$out/default/fuzzer_stats"
grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg|run_time)' "$stats"
crashes=$(awk -F: '/^saved_crashes/ {gsub(/ /, "", $2); print $2}' "$stats")
# Only the inputs that reached new code (AFL++ marks them "+cov"), named by content
# so that a rerun adds only what is new.
for input in "$out"/default/queue/id:*+cov*; do
  [ -e "$input" ] || continue
  cp "$input" "corpus/$target/$(sha256sum < "$input" | cut -c1-16)"
done
if [ "$crashes" != "0" ]; then
  echo "$target: $crashes crash(es), inputs in fuzz/$out/default/crashes" >&2
  exit 1
fi
echo "$target: no crash in $minutes minutes; corpus now $(ls "corpus/$target" | wc -l) inputs"
