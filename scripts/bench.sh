#!/usr/bin/env bash
# The benchmark command (README, docs/benchmarks.md). NOT part of the test command: it takes
# 15-30 min on a 2-core machine and prints figures, it asserts nothing about speed.
#
# From a fresh clone: installs its load generator (h2load, pinned Debian package), builds the
# local control plane when it is not cached, builds in release mode, runs every benchmark, and prints one Markdown table in which each figure
# stands next to its baseline measured IN THE SAME RUN, with the ratio. Machines here are shared
# and noisy: read the ratios, not the absolute figures.
#
#   1. the webhook alone (h2load, HTTP/1.1 and HTTP/2, 1 and 8 connections) against a trivial
#      HTTPS server on the same TLS stack answering the same bytes, and the webhook without
#      TCP_NODELAY (how it was served before) for the before/after;
#   2. pod creation through the real API server with vs without the webhook, and
#   3. the operator's memory with 1,000 bindings, 1,000 policy ConfigMaps and 10,000 pods
#      (both on the local control plane, built from Go modules and cached the first time);
#   4. controller throughput to Ready for 1,000 bindings over 1 and 10 vaults against the Key Vault
#      double throttling at the service's limits (time scaled x10), and the steady state over one
#      simulated hour from the double's request log;
#   5. the criterion benches of decide() and of the release-policy core.
#
# Environment:
#   BENCH_SECONDS=5      length of one load-generator run
#   BENCH_REPEATS=3      runs per figure (the table shows medians)
#   BENCH_SKIP=...       comma-separated sections to skip: webhook,cluster,controller,criterion
#   BENCH_BINDINGS=1000  bindings in the controller and memory benchmarks
#   BENCH_PODS=10000     pods in the memory benchmark
#   BENCH_OUT=target/bench  where logs, raw figures and the table go
#   BENCH_PROFILE=1      also count the instructions of one admission of case (a) with valgrind's
#                        callgrind (Debian valgrind; repeatable where times are not: this machine
#                        has no hardware counters for `perf`), as a table row, and write the
#                        functions that execute them to $BENCH_OUT/webhook-profile.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
step() { printf '\n==> [%s +%4ss] %s\n' "$(date -u +%H:%M:%S)" "$(( SECONDS - start ))" "$*" >&2; }
trap 'rc=$?; [[ $rc -eq 0 ]] || printf "\n==> [%s +%4ss] FAILED (exit %s)\n" "$(date -u +%H:%M:%S)" "$(( SECONDS - start ))" "$rc" >&2' EXIT

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Symbols kept (the release profile strips them) so that a profiler names functions; no effect on speed.
# Every release build below uses the same setting, so they share one set of artifacts.
export CARGO_PROFILE_RELEASE_STRIP=false
SECS="${BENCH_SECONDS:-5}"
REPEATS="${BENCH_REPEATS:-3}"
SKIP=",${BENCH_SKIP:-},"
export BENCH_BINDINGS="${BENCH_BINDINGS:-1000}"
export BENCH_PODS="${BENCH_PODS:-10000}"
OUT="${BENCH_OUT:-target/bench}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROWS="$OUT/rows.tsv"   # section \t figure \t value \t baseline \t ratio
: >"$ROWS"
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$ROWS"; }
skipped() { [[ "$SKIP" == *",$1,"* ]]; }

# ---------------------------------------------------------------------------------------------
# The load generator: h2load from Debian's nghttp2-client, the version this table was made with
# (bookworm's). Debian replaces a point release in its archive when a security update lands: the
# script then takes the archive's version and says so, and the table names the version it ran.
H2LOAD_DEB_VERSION="${H2LOAD_DEB_VERSION:-1.52.0-1+deb12u3}"
step "load generator: h2load (Debian nghttp2-client $H2LOAD_DEB_VERSION)"
installed=$(dpkg-query -W -f='${Version}' nghttp2-client 2>/dev/null || true)
if [[ "$installed" != "$H2LOAD_DEB_VERSION" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "nghttp2-client=$H2LOAD_DEB_VERSION" >&2 || {
      echo "nghttp2-client $H2LOAD_DEB_VERSION is not in the archive any more; installing the archive's version" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >&2
    }
  elif ! command -v h2load >/dev/null; then
    echo "h2load is missing: install the nghttp2-client package (apt-get install nghttp2-client=$H2LOAD_DEB_VERSION)" >&2
    exit 1
  fi
fi
H2LOAD_VERSION=$(h2load --version | head -1)
echo "$H2LOAD_VERSION" >&2

step "release build (one build, reused by every section)"
cargo build --release -p ckb-e2e --bin bench-webhook --bin bench-cluster -p ckb-operator --bin ckb-operator >&2
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$TARGET/release"

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
pct() { # pct P FILE: the P-th percentile of the numbers in FILE
  sort -g "$2" | awk -v p="$1" '{v[NR]=$1} END {i=int(NR*p/100+0.999999); if (i<1) i=1; if (i>NR) i=NR; print v[i]}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0==0) print "n/a"; else printf "%.2f", a/b}'; }

# ---------------------------------------------------------------------------------------------
if ! skipped webhook; then
  step "1. webhook alone vs a trivial HTTPS server (h2load, ${SECS}s x ${REPEATS} per figure)"
  W="$OUT/webhook"; mkdir -p "$W"
  declare -A PORT PID
  for mode in webhook baseline webhook-no-nodelay; do
    # NB: the webhook logs every admission as the operator does; the log goes to a file.
    "$BIN/bench-webhook" --mode "$mode" --out "$W" --log >"$W/$mode.port" 2>"$W/$mode.log" &
    PID[$mode]=$!
  done
  trap 'kill ${PID[*]} 2>/dev/null || true' EXIT
  for mode in webhook baseline webhook-no-nodelay; do
    for _ in $(seq 100); do grep -q '^port=' "$W/$mode.port" 2>/dev/null && break; sleep 0.1; done
    PORT[$mode]=$(sed -n 's/^port=//p' "$W/$mode.port")
    [[ -n "${PORT[$mode]}" ]] || { cat "$W/$mode.log" >&2; exit 1; }
  done
  grep 'response bytes' "$W/webhook.log" >&2 || true

  # One h2load run; prints "rps p50_ms p99_ms".
  load() { # load MODE CASE PROTO CONNS
    local mode=$1 case=$2 proto=$3 c=$4 log="$W/lat.$1.log" flags=()
    [[ $proto == h1 ]] && flags+=(--h1)
    rm -f "$log"
    h2load "${flags[@]}" -D "$SECS" --warm-up-time=1 -c "$c" -t 1 -m 1 \
      -d "$W/$case.json" -H 'content-type: application/json' --log-file="$log" \
      "https://127.0.0.1:${PORT[$mode]}/mutate" >"$W/h2load.out" 2>&1 || { cat "$W/h2load.out" >&2; exit 1; }
    # "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout"
    local ok; ok=$(awk '/^requests:/ {for (i = 2; i <= NF; i++) if ($i ~ /^(failed|errored|timeout)/) printf "%d ", $(i-1); print ""}' "$W/h2load.out" | sed 's/ $//')
    if [[ "$ok" != "0 0 0" ]]; then echo "h2load: failures ($ok) against $mode:" >&2; cat "$W/h2load.out" >&2; exit 1; fi
    # Status 0: the request still in flight when the timed run ended (not counted by h2load either).
    awk '$2 != 0' "$log" >"$log.done"; mv "$log.done" "$log"
    if awk '$2 != 200' "$log" | grep -q .; then echo "non-200 answers from $mode" >&2; exit 1; fi
    local rps; rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$W/h2load.out")
    awk '{print $3/1000}' "$log" >"$log.ms"
    echo "$rps $(pct 50 "$log.ms") $(pct 99 "$log.ms")"
  }

  for case in patch allow; do
    for proto in h1 h2; do
      for c in 1 8; do
        modes=(webhook baseline)
        [[ $case == patch ]] && modes+=(webhook-no-nodelay)
        for mode in "${modes[@]}"; do : >"$W/res.$mode"; done
        for _ in $(seq "$REPEATS"); do
          # Side by side: each repeat runs every server back to back.
          for mode in "${modes[@]}"; do load "$mode" "$case" "$proto" "$c" >>"$W/res.$mode"; done
        done
        for mode in "${modes[@]}"; do
          read -r rps p50 p99 < <(paste <(cut -d' ' -f1 "$W/res.$mode" | median) \
            <(cut -d' ' -f2 "$W/res.$mode" | median) <(cut -d' ' -f3 "$W/res.$mode" | median))
          eval "R_${mode//-/_}='$rps' P50_${mode//-/_}='$p50' P99_${mode//-/_}='$p99'"
        done
        what="($case) $proto, $c conn"
        row webhook "$what: admissions/s" "$R_webhook" "$R_baseline" "$(ratio "$R_webhook" "$R_baseline")"
        row webhook "$what: p50 ms" "$P50_webhook" "$P50_baseline" "$(ratio "$P50_webhook" "$P50_baseline")"
        row webhook "$what: p99 ms" "$P99_webhook" "$P99_baseline" "$(ratio "$P99_webhook" "$P99_baseline")"
        if [[ $case == patch ]]; then
          row webhook "$what, before TCP_NODELAY (vs now): admissions/s" "$R_webhook_no_nodelay" "$R_webhook" "$(ratio "$R_webhook_no_nodelay" "$R_webhook")"
          row webhook "$what, before TCP_NODELAY (vs now): p99 ms" "$P99_webhook_no_nodelay" "$P99_webhook" "$(ratio "$P99_webhook_no_nodelay" "$P99_webhook")"
        fi
        printf '  %-22s webhook %8s/s p50 %6s p99 %6s | baseline %8s/s p50 %6s p99 %6s\n' "$what" \
          "$R_webhook" "$P50_webhook" "$P99_webhook" "$R_baseline" "$P50_baseline" "$P99_baseline" >&2
      done
    done
  done
  if [[ "${BENCH_PROFILE:-}" == 1 ]]; then
    step "profile: instructions of the handler (parse, decide, encode) for case (a), callgrind"
    command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2
    # Two runs, 20 and 120 admissions: the difference / 100 is one admission without the start-up.
    for n in 20 120; do
      valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$n" \
        "$BIN/bench-webhook" --mode profile --out "$W" --iterations "$n" 2>"$OUT/callgrind.$n.log"
    done
    ir() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}'; }
    per=$(awk -v a="$(ir "$OUT/callgrind.120")" -v b="$(ir "$OUT/callgrind.20")" 'BEGIN {printf "%.0f", (a-b)/100}')
    row webhook "(patch) instructions per admission, handler without transport (callgrind)" "$per" "" ""
    callgrind_annotate --inclusive=no "$OUT/callgrind.120" >"$OUT/webhook-profile.txt" 2>/dev/null || true
    echo "profile: $OUT/webhook-profile.txt ($per instructions per admission)" >&2
  fi
  kill "${PID[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  trap - EXIT
fi

# ---------------------------------------------------------------------------------------------
if ! skipped cluster; then
  step "2-3. through the real API server, and memory at scale (local control plane)"
  # Built once from Go modules and cached outside the checkout (15-25 min the first time).
  bash e2e/scripts/build-control-plane.sh >&2
  eval "$(bash scripts/install-tools.sh env)"
  bash scripts/install-tools.sh helm >&2
  CKB_OPERATOR_BIN="$BIN/ckb-operator" "$BIN/bench-cluster" --rows "$ROWS" \
    --bindings "$BENCH_BINDINGS" --pods "$BENCH_PODS" >&2
fi

# ---------------------------------------------------------------------------------------------
if ! skipped controller; then
  step "4. controller throughput and steady state against the throttling Key Vault double"
  CKB_BENCH_BINDINGS="$BENCH_BINDINGS" cargo test --release -p ckb-operator --lib \
    controller::double_tests::throughput -- --nocapture --test-threads=1 >"$OUT/controller.log" 2>&1 || {
      cat "$OUT/controller.log" >&2; exit 1; }
  grep '^BENCH' "$OUT/controller.log" | sed 's/^BENCH\t//' >>"$ROWS"
  grep '^throughput\|^steady' "$OUT/controller.log" >&2 || true
fi

# ---------------------------------------------------------------------------------------------
if ! skipped criterion; then
  step "5. criterion: decide() and the release-policy core"
  cargo bench -p ckb-operator --bench webhook_decide --bench release_policy -- \
    --warm-up-time 1 --measurement-time 3 >"$OUT/criterion.log" 2>&1 || { cat "$OUT/criterion.log" >&2; exit 1; }
  est() { # median estimate in microseconds of target/criterion/<id>
    local f="$TARGET/criterion/$1/new/estimates.json"
    [[ -f "$f" ]] || { echo "n/a"; return; }
    python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["median"]["point_estimate"]/1000))' "$f"
  }
  d=$(est "decide_2-containers-120KiB-policy")
  h=$(est "parse+decide+answer_2-containers-120KiB-policy")
  # The baseline of the pure functions: hashing the same 120 KiB (the least any admission of that
  # pod must do to know the policy's hash).
  hr=$(est "policy_hash/hash_rego_120KiB")
  row criterion "decide(), 2 containers, 120 KiB policy: µs (vs SHA-256 of the policy)" "$d" "$hr" "$(ratio "$d" "$hr")"
  row criterion "parse + decide + answer: µs (vs SHA-256 of the policy)" "$h" "$hr" "$(ratio "$h" "$hr")"
  for n in 1 10 100; do
    fb=$(est "release_policy/for_binding/$n"); rc=$(est "release_policy/reconcile_compare/$n")
    row criterion "release policy for_binding, $n hashes: µs" "$fb" "" ""
    row criterion "release policy build+decode+compare, $n hashes: µs (vs for_binding)" "$rc" "$fb" "$(ratio "$rc" "$fb")"
  done
  row criterion "hash of a 120 KiB policy from the annotation: µs (vs SHA-256 alone)" \
    "$(est policy_hash/hash_annotation_120KiB)" "$hr" "$(ratio "$(est policy_hash/hash_annotation_120KiB)" "$hr")"
fi

# ---------------------------------------------------------------------------------------------
step "table"
{
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM," \
    "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg);" \
    "$(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?');" \
    "$H2LOAD_VERSION; ${SECS} s x ${REPEATS} runs per webhook figure (medians);" \
    "scale: $BENCH_BINDINGS bindings and policy ConfigMaps, $BENCH_PODS pods"
  echo
  echo "| section | figure | value | baseline (same run) | ratio |"
  echo "|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$ROWS"
} | tee "$OUT/table.md"
step "done: $OUT/table.md"
