# e2e-report.sh - sourced by the e2e parts that boot a guest of their own and then
# run a spec's whole check list on it beside their own checks (e2e-two-vmms.sh,
# e2e-two-devices.sh). Uses the caller's VFU, PY, SCRIPT_DIR, LOG_DIR, BOOT_TIMEOUT and
# qemu-e2e.sh's hpass, hfail, count and say.

# e2e_stop_server: SIGTERM to $SERVER_PID and wait for it; its exit status goes to
# SERVER_STATUS and SERVER_PID is cleared (qemu-e2e.sh's cleanup then leaves it alone).
e2e_stop_server() {
  set +e  # a server that has died already is a status, not an error here
  kill -TERM "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID"
  SERVER_STATUS=$?
  set -e
  SERVER_PID=""
}

# e2e_server_stopped NAME STATUS: the server's exit status after SIGTERM is 0.
e2e_server_stopped() {
  if [ "$2" -eq 0 ]; then hpass "$1" server-stop "status 0"; else hfail "$1" server-stop "status 0" "status $2"; fi
}

# e2e_report NAME SPEC GUEST_LOG QEMU_STATUS SERVER_LOG [GUEST_LABEL]
#   Checks GUEST_LOG against SPEC as its variant shapes it (`vfu check-spec --effective`)
#   with scripts/e2e_check.py, names every line spec=NAME, keeps the lines in
#   LOG_DIR/NAME.check.log, prints and counts them. After a FAIL it shows the end of the
#   guest console (lines tagged with GUEST_LABEL, default "guest") and of the server log.
e2e_report() {
  local name=$1 spec=$2 glog=$3 qst=$4 slog=$5 label=${6:-guest}
  local base tag clog="$LOG_DIR/$1.check.log" eff="$LOG_DIR/$1.effective.json"
  base=$(basename "$spec" .json)
  tag=$(tr 'A-Z ' 'a-z-' <<<"$label")
  set +e
  "$VFU" check-spec --effective "$spec" >"$eff" 2>/dev/null
  "$PY" "$SCRIPT_DIR/e2e_check.py" "$spec" "$glog" --qemu-status "$qst" --server-log "$slog" \
    --timeout-seconds "$BOOT_TIMEOUT" --no-summary --effective "$eff" 2>&1 \
    | sed "s/ spec=$base / spec=$name /" >"$clog"
  set -e
  cat "$clog"
  count "$clog"
  if grep -q '^FAIL ' "$clog"; then
    say "$label console ($glog):"; tail -40 "$glog" | sed "s/^/  $tag: /" >&2
    say "server log:"; tail -30 "$slog" | sed 's/^/  server: /' >&2
  fi
}
