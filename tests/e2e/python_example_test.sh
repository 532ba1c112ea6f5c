#!/usr/bin/env bash
# End-to-end: examples/python (generate_stubs.sh + quickstart.py) against a real mplus-server.
# Needs MPLUS_EXAMPLE_DIR (examples/python) besides lib.sh's variables.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
: "${MPLUS_EXAMPLE_DIR:?set MPLUS_EXAMPLE_DIR to examples/python}"

# The interpreter generate_stubs.sh would pick: the first with grpcio and grpc_tools.
PY=""
for candidate in ${PYTHON:-} python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import grpc, grpc_tools.protoc' >/dev/null 2>&1; then
    PY=$candidate
    break
  fi
done
[ -n "$PY" ] || fail "no python3 with grpcio and grpc_tools (scripts/install-deps.sh installs them)"

STUBS="$E2E_TMP/stubs"
PYTHON="$PY" "$MPLUS_EXAMPLE_DIR/generate_stubs.sh" "$STUBS" >/dev/null ||
  fail "generate_stubs.sh failed"
[ -f "$STUBS/mplus/v1/memory_service_pb2_grpc.py" ] || fail "no stubs in $STUBS"

start_server
wait_ready

LOG="$E2E_TMP/quickstart.log"
"$PY" "$MPLUS_EXAMPLE_DIR/quickstart.py" --server "$SERVER_ADDR" --stubs_dir "$STUBS" \
  --session_id py-quickstart --max_new_tokens 8 >"$LOG" 2>&1 ||
  fail "quickstart.py failed: $(cat "$LOG")"
expect_contains "$LOG" "session: py-quickstart" "quickstart created its session"
grep -qE "^injected: [1-9][0-9]* tokens" "$LOG" || fail "quickstart injected nothing: $(cat "$LOG")"
grep -qE "^usage: finish=FINISH_REASON_(STOP|LENGTH) .*completion_tokens=[1-8] " "$LOG" ||
  fail "quickstart usage line: $(cat "$LOG")"
expect_contains "$LOG" "deleted: py-quickstart" "quickstart deleted its session"

# Unreachable server: a clean error message and a non-zero exit, no traceback.
if "$PY" "$MPLUS_EXAMPLE_DIR/quickstart.py" --server "127.0.0.1:$(free_port)" \
    --stubs_dir "$STUBS" --timeout 3 >"$LOG" 2>&1; then
  fail "quickstart succeeded without a server"
fi
expect_contains "$LOG" "error: UNAVAILABLE" "quickstart without a server"

stop_server
echo "PASS: e2e.python_example"
