#!/usr/bin/env bash
# End-to-end: the mplus CLI against a real mplus-server (default demo checkpoint). Covers usage
# errors, then the whole flow: create -> inject a multi-piece file (and resume it) -> generate
# -> get/list -> export -> import as a new id -> the same generation from the copy -> delete.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

# --- Usage and connection errors (no server needed) ---------------------------------------
cli; expect_rc 2 "no arguments"
cli help; expect_rc 0 "help"
for word in "session create" "session get" "session list" "session delete" inject generate \
    export import; do
  expect_contains "$OUT" "$word" "help mentions '$word'"
done
cli --help; expect_rc 0 "--help"
cli --no_such_flag session list; expect_rc 2 "unknown flag"
cli session get; expect_rc 2 "session get without an id"
cli session frob; expect_rc 2 "unknown session subcommand"
cli inject --session s; expect_rc 2 "inject without text"
cli generate "prompt"; expect_rc 2 "generate without --session"
cli export --session s; expect_rc 2 "export without --out"
cli --max_new_tokens=many generate --session s hi; expect_rc 2 "bad flag value"
SERVER_ADDR="127.0.0.1:$(free_port)" cli --max_attempts=2 session list
expect_rc 1 "no server listening"
expect_contains "$ERR" "UNAVAILABLE" "no server listening"

# --- The server ------------------------------------------------------------------------------
start_server
wait_ready

# --- Sessions ----------------------------------------------------------------------------------
cli session create --id e2e-one --label owner=e2e --label note=a,b
expect_rc 0 "session create"
[ "$(field session_id)" = "e2e-one" ] || fail "created id: $(cat "$OUT")"
[ "$(field labels)" = "note=a,b,owner=e2e" ] || fail "labels: $(cat "$OUT")"
[ "$(field injected_tokens)" = "0" ] || fail "new session has tokens: $(cat "$OUT")"
cli session create --id e2e-one; expect_rc 1 "duplicate create"
expect_contains "$ERR" "ALREADY_EXISTS" "duplicate create"
cli session get no-such-session; expect_rc 1 "get unknown"
expect_contains "$ERR" "NOT_FOUND" "get unknown"

# --- Inject a file in several pieces --------------------------------------------------------
DOC="$E2E_TMP/doc.txt"
for i in $(seq 1 40); do
  echo "Paragraph $i. The lighthouse keeper on the northern island counts $((i * 7)) ships each" \
       "winter, writes their names in a green notebook, and sends the list to the harbour office."
done >"$DOC"
cli inject --session e2e-one --file "$DOC" --chunk_bytes=1500
expect_rc 0 "inject file"
PIECES=$(sed -n 's/.*(\([0-9]*\) pieces).*/\1/p' "$OUT")
TOKENS=$(sed -n 's/^injected \([0-9]*\) tokens.*/\1/p' "$OUT")
expect_between "$PIECES" 2 1000 "pieces of the file"
expect_between "$TOKENS" 1 1000000 "tokens injected"
expect_contains "$ERR" "inject: 100%" "progress lines on a non-terminal stderr"
cli session get e2e-one; expect_rc 0 "get after inject"
[ "$(field injected_tokens)" = "$TOKENS" ] || fail "injected_tokens != $TOKENS: $(cat "$OUT")"
INJECTS=$(field inject_count)
[ "$INJECTS" -ge "$PIECES" ] || fail "inject_count $INJECTS < $PIECES pieces"

# Re-running the same upload is idempotent (content-derived request ids).
cli inject --session e2e-one --file "$DOC" --chunk_bytes=1500; expect_rc 0 "inject file again"
cli session get e2e-one
[ "$(field injected_tokens)" = "$TOKENS" ] || fail "re-run injected again: $(cat "$OUT")"
[ "$(field inject_count)" = "$INJECTS" ] || fail "re-run changed inject_count: $(cat "$OUT")"

# Typed text is injected anew.
cli inject --session e2e-one "The harbour office is painted yellow."; expect_rc 0 "inject text"
cli session get e2e-one
[ "$(field injected_tokens)" -gt "$TOKENS" ] || fail "text inject added nothing: $(cat "$OUT")"
TOTAL=$(field injected_tokens)

# --- Generate ----------------------------------------------------------------------------------
GEN=(generate --session e2e-one --max_new_tokens=12 --temperature=0 "How many ships does the keeper count?")
cli "${GEN[@]}"; expect_rc 0 "generate"
expect_contains "$ERR" "[finish: " "usage summary on stderr"
COMPLETION=$(sed -n 's/.*| completion \([0-9]*\) tokens.*/\1/p' "$ERR")
expect_between "$COMPLETION" 1 12 "completion tokens"
cp "$OUT" "$E2E_TMP/answer1"
cli session get e2e-one
[ "$(field injected_tokens)" = "$TOTAL" ] || fail "generate changed memory: $(cat "$OUT")"
cli generate --session e2e-one --temperature=-1 hi; expect_rc 1 "negative temperature"
expect_contains "$ERR" "INVALID_ARGUMENT" "negative temperature"

# --- List, JSON ----------------------------------------------------------------------------
cli session create --id e2e-other; expect_rc 0 "second session"
cli session list; expect_rc 0 "list"
expect_contains "$OUT" "e2e-one" "list"
expect_contains "$OUT" "e2e-other" "list"
cli --json session get e2e-one; expect_rc 0 "get --json"
expect_contains "$OUT" '"session_id":"e2e-one"' "get --json"

# --- Export, import as a new id, same generation ------------------------------------------
SNAP="$E2E_TMP/e2e-one.mplus"
cli export --session e2e-one --out "$SNAP"; expect_rc 0 "export"
[ "$(head -c 8 "$SNAP")" = "MPLSNAP1" ] || fail "export file lacks its magic"
[ ! -e "$SNAP.partial" ] || fail "export left its .partial file"
cli import --in "$SNAP" --session e2e-copy; expect_rc 0 "import"
[ "$(field session_id)" = "e2e-copy" ] || fail "imported id: $(cat "$OUT")"
[ "$(field injected_tokens)" = "$TOTAL" ] || fail "imported counters: $(cat "$OUT")"
cli import --in "$SNAP" --session e2e-copy; expect_rc 1 "import onto an existing id"
expect_contains "$ERR" "ALREADY_EXISTS" "import onto an existing id"
GEN[2]=e2e-copy
cli "${GEN[@]}"; expect_rc 0 "generate from the copy"
cmp -s "$OUT" "$E2E_TMP/answer1" ||
  fail "copy generated '$(cat "$OUT")', original '$(cat "$E2E_TMP/answer1")'"

# --- Delete --------------------------------------------------------------------------------
for id in e2e-one e2e-copy e2e-other; do
  cli session delete "$id"; expect_rc 0 "delete $id"
  expect_contains "$OUT" "deleted session $id" "delete $id"
done
cli session get e2e-one; expect_rc 1 "get deleted"
expect_contains "$ERR" "NOT_FOUND" "get deleted"
cli session list; expect_rc 0 "list after delete"
if grep -q "e2e-" "$OUT"; then fail "sessions left: $(cat "$OUT")"; fi

stop_server
echo "PASS: e2e.cli"
