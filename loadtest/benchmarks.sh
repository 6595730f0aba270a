#!/usr/bin/env bash
# Regenerates what BENCHMARKS.md quotes, on this machine, in one go: the criterion benches, the
# forwarding comparison with nginx, and the surge scenarios side by side (direct, nginx,
# anticamera). Each result lands in $OUT and its table replaces the block between
# `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in BENCHMARKS.md.
#
#   loadtest/benchmarks.sh                         # everything (about 40 minutes)
#   ONLY="surge-20x spike" loadtest/benchmarks.sh  # some scenarios only, no benches
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$CARGO_TARGET_DIR/benchmarks}
SCENARIOS=${ONLY:-"surge-20x spike ramp window-opening slowdown claim-day"}
mkdir -p "$OUT"
./scripts/setup-test-deps nginx-light wrk
# The proxy alone first (the binary bench-forward.sh measures), then the load-test kit.
cargo build --release --quiet -p anticamera
cargo build --release --quiet -p surge

splice() { # name file: replace the generated block NAME in BENCHMARKS.md with the file
  python3 - "$1" "$2" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
body = open(path).read().strip()
doc = open("BENCHMARKS.md").read()
pat = re.compile(r"(<!-- generated:%s -->\n).*?(\n<!-- /generated:%s -->)" % (re.escape(name), re.escape(name)), re.S)
if not pat.search(doc):
    sys.exit(f"BENCHMARKS.md has no generated:{name} block")
doc = pat.sub(lambda m: m.group(1) + body + m.group(2), doc)
open("BENCHMARKS.md", "w").write(doc)
PY
}

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); $(date -u +%Y-%m-%d)."
} >"$OUT/machine.md"
splice machine "$OUT/machine.md"

if [[ -z ${ONLY:-} ]]; then
  cargo bench --bench pass --bench ratelimit --bench framing --bench schedule --bench cohort \
    --bench pages -- --warm-up-time 1 --measurement-time 3 2>&1 | tee "$OUT/criterion.txt"
  THREADS=2 ROUNDS=3 DURATION=8s loadtest/bench-forward.sh 2>&1 | tee "$OUT/forward.txt"
fi

for s in $SCENARIOS; do
  "$CARGO_TARGET_DIR/release/surge" run "loadtest/scenarios/$s.toml" \
    --against direct,nginx,anticamera --out "$OUT/$s"
  splice "surge:$s" "$OUT/$s/summary.md"
done
echo "Reports (HTML, JSON) in $OUT; BENCHMARKS.md updated."
