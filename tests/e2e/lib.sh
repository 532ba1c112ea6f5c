# shellcheck shell=bash
# Shared by the e2e test scripts (sourced): start the real mplus-server on free loopback ports,
# wait until it serves, stop it with SIGTERM, and assertion helpers.
# Needs MPLUS_SERVER_BIN and MPLUS_CLI_BIN (ctest passes them; see CMakeLists.txt).

: "${MPLUS_SERVER_BIN:?set MPLUS_SERVER_BIN to build/server/mplus-server}"
: "${MPLUS_CLI_BIN:?set MPLUS_CLI_BIN to build/client/mplus}"

E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/mplus-e2e.XXXXXX")
SERVER_PID=""
SERVER_LOG="$E2E_TMP/server.log"

cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$SERVER_LOG" ]; then
    echo "--- server log (last 40 lines) ---" >&2
    tail -n 40 "$SERVER_LOG" >&2
  fi
  rm -rf "$E2E_TMP"
  exit "$rc"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the server (default demo checkpoint) in the background; sets SERVER_ADDR.
start_server() {
  local port metrics_port
  port=$(free_port)
  metrics_port=$(free_port)
  SERVER_ADDR="127.0.0.1:$port"
  "$MPLUS_SERVER_BIN" --listen="$SERVER_ADDR" --metrics_listen="127.0.0.1:$metrics_port" \
    --data_dir="$E2E_TMP/data" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
}

# Polls with the CLI itself until calls stop failing with UNAVAILABLE (60 s at most).
wait_ready() {
  local deadline=$((SECONDS + 60)) err="$E2E_TMP/ready.err"
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "mplus-server exited during startup"
    if "$MPLUS_CLI_BIN" --server="$SERVER_ADDR" --max_attempts=1 --timeout=5 session list \
        >/dev/null 2>"$err"; then
      return 0
    fi
    grep -q UNAVAILABLE "$err" || fail "server not usable: $(cat "$err")"
    sleep 0.5
  done
  fail "mplus-server not ready within 60 s: $(cat "$err")"
}

# SIGTERM, then expects a clean exit (status 0) within 60 s.
stop_server() {
  kill -TERM "$SERVER_PID"
  local deadline=$((SECONDS + 60)) status=0
  while kill -0 "$SERVER_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  kill -0 "$SERVER_PID" 2>/dev/null && fail "mplus-server still running 60 s after SIGTERM"
  wait "$SERVER_PID" || status=$?
  SERVER_PID=""
  [ "$status" -eq 0 ] || fail "mplus-server exited with status $status after SIGTERM"
}

# Runs the CLI against the server: stdout to $OUT, stderr to $ERR, exit status to $RC.
OUT="$E2E_TMP/out"
ERR="$E2E_TMP/err"
RC=0
cli() {
  RC=0
  "$MPLUS_CLI_BIN" --server="${SERVER_ADDR:-127.0.0.1:1}" "$@" >"$OUT" 2>"$ERR" || RC=$?
}

expect_rc() {
  [ "$RC" -eq "$1" ] || fail "$2: exit status $RC, expected $1; stdout: $(cat "$OUT"); stderr: $(cat "$ERR")"
}

expect_contains() {  # FILE TEXT WHAT
  grep -qF -- "$2" "$1" || fail "$3: expected '$2' in: $(cat "$1")"
}

expect_between() {  # VALUE LO HI WHAT: VALUE is an integer in [LO, HI]
  if ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt "$2" ] || [ "$1" -gt "$3" ]; then
    fail "$4: '$1' not in [$2, $3]; stdout: $(cat "$OUT"); stderr: $(cat "$ERR")"
  fi
}

# The value of "key: value" in the CLI's session output.
field() {
  sed -n "s/^$1: //p" "$OUT"
}
