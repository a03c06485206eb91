# Shared by the shell scripts of scripts/ and e2e/scripts/ (sourced, not run): logging and a step
# that reports progress every 30 seconds, so a long build never looks like a hang in CI.
# The sourcing script sets `log_tag` first (and may set `build_start` to report a running total).

# Logs to stderr (stdout is reserved for what the scripts print for their callers).
log() { printf '[%s %s] %s\n' "$log_tag" "$(date -u +%H:%M:%S)" "$*" >&2; }

# run_with_progress WHAT COMMAND...: runs COMMAND in the background, logs "still WHAT" every 30
# seconds while it runs, and returns its exit status.
run_with_progress() {
  local what="$1" step_start=$SECONDS pid total=""
  shift
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    [[ -n "${build_start:-}" ]] && total=", $(( SECONDS - build_start ))s in total"
    kill -0 "$pid" 2>/dev/null && log "still $what: $(( SECONDS - step_start ))s$total"
  done
  wait "$pid"
}
