#!/usr/bin/env bash
# One benchmark run: the raw Unix-socket ping-pong baseline, our server's round trips
# (4-byte config/BAR reads and writes, 64 KiB and 1 MiB reads and writes, latency),
# libvfio-user's sample server on the same rows when it is built, scaling over
# devices and clients, connection and idle-device cost, start-up time of every spec,
# heap allocations per request, and the migration benchmark; pinned (client and
# server on one CPU) and unpinned. Every figure is a median of alternating rounds,
# reported as a ratio against the baseline measured in the same run.
#
#   scripts/bench.sh [--rounds N] [--quick]
#
# LIBVFIO_USER_SERVER: path of libvfio-user's samples/server (built by you outside
#   this repository, with BAR0 accepting 4-byte accesses and BAR1 of at least 1 MiB);
#   its rows are skipped with a note when unset or missing.
# VFU: the vfu binary to measure (default: a release build of this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=5
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --quick) QUICK=1; ROUNDS=3; shift ;;
        *) echo "usage: scripts/bench.sh [--rounds N] [--quick]" >&2; exit 2 ;;
    esac
done

if [ -z "${VFU:-}" ]; then
    swift build -c release --product vfu >/dev/null
    VFU=$ROOT/.build/release/vfu
fi
WORK=$(mktemp -d /tmp/vfu-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/benchc" scripts/bench/benchc.c
cc -O2 -shared -fPIC -o "$WORK/malloccount.so" scripts/bench/malloccount.c
B=$WORK/benchc
LVU=${LIBVFIO_USER_SERVER:-}
[ -n "$LVU" ] && [ -x "$LVU" ] || LVU=""
N_SMALL=$([ $QUICK = 1 ] && echo 20000 || echo 50000)
N_64K=$([ $QUICK = 1 ] && echo 3000 || echo 8000)
N_1M=$([ $QUICK = 1 ] && echo 300 || echo 800)

load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_START=$(load)
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else print a[int((NR+1)/2)]}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

# rows: name | ours: op region offset size | libvfio-user: the same | raw request and reply bytes | round trips
# ours: specs/default.json (BAR0 4 KiB registers, 0x104 writable; BAR2 1 MiB RAM)
# libvfio-user: samples/server (BAR0 8-byte timer register, read; BAR1 RAM through its access callback, written)
ROWS=(
    "4 B config REGION_READ|r 7 0 4|r 7 0 4|32 36|$N_SMALL"
    "4 B BAR0 REGION_READ|r 0 0x100 4|r 0 0 4|32 36|$N_SMALL"
    "4 B BAR0 REGION_WRITE|w 0 0x104 4|w 1 0 4|36 32|$N_SMALL"
    "64 KiB REGION_READ|r 2 0 65536|r 1 0 65536|32 65568|$N_64K"
    "64 KiB REGION_WRITE|w 2 0 65536|w 1 0 65536|65568 32|$N_64K"
    "1 MiB REGION_READ|r 2 0 1048576|r 1 0 1048576|32 1048608|$N_1M"
    "1 MiB REGION_WRITE|w 2 0 1048576|w 1 0 1048576|1048608 32|$N_1M"
)

start_vfu() {  # socket [taskset prefix...]
    local sock=$1; shift
    rm -f "$sock"
    "$@" "$VFU" serve specs/default.json --socket "$sock" --log-level error >/dev/null 2>&1 &
    PIDS+=($!)
    echo $!
}

run_mode() {  # pinned|unpinned
    local mode=$1 pin=()
    [ "$mode" = pinned ] && pin=(taskset -c 0)
    local echo_pids=() i=0
    for row in "${ROWS[@]}"; do
        IFS='|' read -r name ours lvu sizes n <<<"$row"
        for r in $(seq "$ROUNDS"); do
            # Alternate the order between rounds so drift in the machine's load hits all alike.
            local order="pp ours lvu"
            [ $((r % 2)) = 0 ] && order="lvu ours pp"
            for who in $order; do
                local out=""
                case $who in
                    pp)
                        rm -f "$WORK/pp.sock"
                        "${pin[@]}" "$B" echo "$WORK/pp.sock" ${sizes} & local ep=$!
                        out=$("${pin[@]}" "$B" raw "$WORK/pp.sock" ${sizes} "$n" || true)
                        { kill $ep 2>/dev/null || true; wait $ep 2>/dev/null || true; } ;;
                    ours)
                        local sp; sp=$(start_vfu "$WORK/vfu.sock" "${pin[@]}")
                        out=$("${pin[@]}" "$B" vfio "$WORK/vfu.sock" $ours "$n" 2>/dev/null || true)
                        { kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true; } ;;
                    lvu)
                        [ -n "$LVU" ] || continue
                        rm -f "$WORK/lvu.sock"
                        "${pin[@]}" "$LVU" "$WORK/lvu.sock" >/dev/null 2>&1 & local lp=$!
                        out=$(timeout 20 "${pin[@]}" "$B" vfio "$WORK/lvu.sock" $lvu "$n" 2>/dev/null || true)
                        { kill $lp 2>/dev/null || true; wait $lp 2>/dev/null || true; } ;;
                esac
                echo "$out" >>"$WORK/$mode.$i.$who"
            done
        done
        i=$((i + 1))
    done
}

metric() {  # file field -> median
    [ -s "$1" ] || { echo nan; return; }
    field "$2" <"$1" | median
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "—"; else printf "%.2f", a / b }'; }
fmt() { awk -v a="$1" 'BEGIN { if (a == "nan" || a == "") print "—"; else if (a >= 100) printf "%\047d", a; else printf "%.2f", a }'; }

table() {  # mode
    local mode=$1 i=0
    echo
    echo "### $mode (client and server $( [ "$mode" = pinned ] && echo 'on CPU 0' || echo 'free to move'))"
    echo
    echo "| row | unit | ping-pong | libvfio-user | ours | ours / ping-pong | libvfio-user / ping-pong | ours / libvfio-user |"
    echo "|---|---|---|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r name _ _ _ _ <<<"$row"
        local f=rate unit="round trips/s"
        case $name in 64*|1\ MiB*) f=mbps; unit="MB/s" ;; esac
        local pp ours lvu
        pp=$(metric "$WORK/$mode.$i.pp" $f); ours=$(metric "$WORK/$mode.$i.ours" $f); lvu=$(metric "$WORK/$mode.$i.lvu" $f)
        echo "| $name | $unit | $(fmt "$pp") | $(fmt "$lvu") | $(fmt "$ours") | $(ratio "$ours" "$pp") | $(ratio "$lvu" "$pp") | $(ratio "$ours" "$lvu") |"
        if [ $i = 0 ]; then
            LAT_ROW="| 4 B config read latency p50 / p99 (µs) | µs | $(metric "$WORK/$mode.$i.pp" p50) / $(metric "$WORK/$mode.$i.pp" p99) | $(metric "$WORK/$mode.$i.lvu" p50) / $(metric "$WORK/$mode.$i.lvu" p99) | $(metric "$WORK/$mode.$i.ours" p50) / $(metric "$WORK/$mode.$i.ours" p99) | p99/p50 $(ratio "$(metric "$WORK/$mode.$i.ours" p99)" "$(metric "$WORK/$mode.$i.ours" p50)") | | |"
        fi
        i=$((i + 1))
    done
    echo "$LAT_ROW"
}

echo "running the round-trip rows ($ROUNDS rounds, pinned then unpinned)..." >&2
run_mode pinned
run_mode unpinned

# Scaling: N devices served by one process, one client each, against N raw pairs.
scaling() {
    echo
    echo "### scaling (unpinned; 4 B config REGION_READ; aggregate round trips/s)"
    echo
    echo "| clients | ping-pong pairs | ours | ours / ping-pong |"
    echo "|---|---|---|---|"
    for n in 1 2 4 8; do
        local pp=() ours=()
        for r in $(seq "$ROUNDS"); do
            local eps=()
            for k in $(seq 0 $((n - 1))); do rm -f "$WORK/pp$k.sock"; "$B" echo "$WORK/pp$k.sock" 32 36 & eps+=($!); done
            pp+=("$("$B" fanout "$n" benchc raw "$WORK/pp%d.sock" 32 36 "$N_SMALL" | field rate)")
            { kill "${eps[@]}" 2>/dev/null || true; wait "${eps[@]}" 2>/dev/null || true; }
            rm -f "$WORK"/dev*.sock
            "$VFU" bench-host specs/default.json --count "$n" --socket-prefix "$WORK/dev" >/dev/null 2>&1 & local hp=$!
            ours+=("$("$B" fanout "$n" benchc vfio "$WORK/dev%d.sock" r 7 0 4 "$N_SMALL" | field rate)")
            { kill $hp 2>/dev/null || true; wait $hp 2>/dev/null || true; }
        done
        local a b; a=$(printf '%s\n' "${pp[@]}" | median); b=$(printf '%s\n' "${ours[@]}" | median)
        echo "| $n clients on $n devices | $(fmt "$a") | $(fmt "$b") | $(ratio "$b" "$a") |"
    done
    local pp=() ours=()
    for r in $(seq "$ROUNDS"); do
        local eps=()
        for k in 0 1; do rm -f "$WORK/pp$k.sock"; "$B" echo "$WORK/pp$k.sock" 32 36 & eps+=($!); done
        pp+=("$("$B" fanout 2 benchc raw "$WORK/pp%d.sock" 32 36 "$N_SMALL" | field rate)")
        { kill "${eps[@]}" 2>/dev/null || true; wait "${eps[@]}" 2>/dev/null || true; }
        local sp; sp=$(start_vfu "$WORK/one.sock")
        ours+=("$("$B" fanout 2 benchc vfio "$WORK/one.sock" r 7 0 4 "$N_SMALL" | field rate)")
        { kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true; }
    done
    local a b; a=$(printf '%s\n' "${pp[@]}" | median); b=$(printf '%s\n' "${ours[@]}" | median)
    echo "| 2 clients on 1 device | $(fmt "$a") | $(fmt "$b") | $(ratio "$b" "$a") |"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$1/status"; }

costs() {
    echo
    echo "### cost of a connection and of an idle device"
    echo
    local sp; sp=$(start_vfu "$WORK/c.sock")
    "$B" hold "$WORK/c.sock" 1 </dev/null >/dev/null; sleep 0.3  # listening, and the one client gone
    local rss0 th0; rss0=$(rss_kib "$sp"); th0=$(threads "$sp")
    mkfifo "$WORK/hold.in"
    "$B" hold "$WORK/c.sock" 8 <"$WORK/hold.in" >"$WORK/hold.out" & local hp=$!
    exec 9>"$WORK/hold.in"
    while ! grep -q ready "$WORK/hold.out" 2>/dev/null; do sleep 0.05; done
    local rss8 th8; rss8=$(rss_kib "$sp"); th8=$(threads "$sp")
    exec 9>&-
    wait $hp 2>/dev/null || true
    { kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true; }
    echo "- vfu serve specs/default.json, idle: RSS $rss0 KiB, $th0 threads; with 8 clients: RSS $rss8 KiB, $th8 threads" \
         "($(( (rss8 - rss0) / 8 )) KiB and $(( (th8 - th0) / 8 )) thread(s) per connection)"
    rm -f "$WORK"/dev*.sock
    "$VFU" bench-host specs/default.json --count 1 --socket-prefix "$WORK/dev" >/dev/null 2>&1 & local h1=$!
    "$B" hold "$WORK/dev0.sock" 1 </dev/null >/dev/null; sleep 0.3
    local r1; r1=$(rss_kib $h1)
    { kill $h1 2>/dev/null || true; wait $h1 2>/dev/null || true; }
    rm -f "$WORK"/dev*.sock
    "$VFU" bench-host specs/default.json --count 8 --socket-prefix "$WORK/dev" >/dev/null 2>&1 & local h8=$!
    "$B" hold "$WORK/dev7.sock" 1 </dev/null >/dev/null; sleep 0.3
    local r8 t8; r8=$(rss_kib $h8); t8=$(threads $h8)
    { kill $h8 2>/dev/null || true; wait $h8 2>/dev/null || true; }
    echo "- vfu bench-host (one process, default spec) serving 1 device: RSS $r1 KiB; 8 devices: RSS $r8 KiB, $t8 threads ($(( (r8 - r1) / 7 )) KiB per idle device)"
    if [ -n "$LVU" ]; then
        rm -f "$WORK/lvu.sock"
        "$LVU" "$WORK/lvu.sock" >/dev/null 2>&1 & local lp=$!
        while [ ! -S "$WORK/lvu.sock" ]; do sleep 0.01; done
        echo "- libvfio-user samples/server, idle: RSS $(rss_kib $lp) KiB, $(threads $lp) thread(s) (one client at a time)"
        kill $lp; wait $lp 2>/dev/null || true
    fi
}

startup() {
    echo
    echo "### start to listening (median of $ROUNDS, ms)"
    echo
    echo "| spec | ms |"
    echo "|---|---|"
    for spec in specs/*.json; do
        local ms=()
        for r in $(seq "$ROUNDS"); do
            ms+=("$("$B" startup "$WORK/s.sock" "$VFU" serve "$spec" --socket "$WORK/s.sock" --log-level error | field ms)")
        done
        echo "| $(basename "$spec" .json) | $(printf '%s\n' "${ms[@]}" | median) |"
    done
    if [ -n "$LVU" ]; then
        local ms=()
        for r in $(seq "$ROUNDS"); do ms+=("$("$B" startup "$WORK/l.sock" "$LVU" "$WORK/l.sock" | field ms)"); done
        echo "| libvfio-user samples/server | $(printf '%s\n' "${ms[@]}" | median) |"
    fi
}

# Heap allocations per request in the server: counted by an LD_PRELOAD hook around
# two client runs that differ only in their number of round trips, so connection
# set-up and warm-up cancel out.
allocations() {
    echo
    echo "### heap allocations per request (server process, LD_PRELOAD counter)"
    echo
    echo "| request | allocations per request |"
    echo "|---|---|"
    local spec
    for spec in "config REGION_READ 4 B|r 7 0 4" "BAR0 REGION_READ 4 B|r 0 0x100 4" "BAR0 REGION_WRITE 4 B|w 0 0x104 4" \
                "BAR2 REGION_READ 64 KiB|r 2 0 65536" "BAR2 REGION_WRITE 64 KiB|w 2 0 65536" "REGION_WRITE_MULTI (8 writes)|m 0 0x104 4"; do
        IFS='|' read -r name args <<<"$spec"
        rm -f "$WORK/m.sock"
        LD_PRELOAD=$WORK/malloccount.so "$VFU" serve specs/default.json --socket "$WORK/m.sock" --log-level error \
            >/dev/null 2>"$WORK/m.err" & local mp=$!
        local counts=()
        for n in 1000 11000; do
            "$B" vfio "$WORK/m.sock" $args "$n" >/dev/null 2>&1 || true
            sleep 0.2  # the connection's thread finishes (and frees) after the client left
            kill -USR2 $mp; sleep 0.1
            counts+=("$(tail -1 "$WORK/m.err" | field allocs)")
        done
        "$B" vfio "$WORK/m.sock" $args 1000 >/dev/null 2>&1 || true
        sleep 0.2; kill -USR2 $mp; sleep 0.1
        local c3; c3=$(tail -1 "$WORK/m.err" | field allocs)
        { kill $mp 2>/dev/null || true; wait $mp 2>/dev/null || true; }
        # run 2 (11000 + 1101 warm-up) minus run 3 (1000 + 101): 11000 more round trips.
        echo "| $name | $(awk -v a="${counts[1]}" -v b="${counts[0]}" -v c="$c3" 'BEGIN { printf "%.3f", ((a - b) - (c - a)) / 11000 }') |"
    done
}

migration() {
    echo
    echo "### migration (vfu migrate --bench, 256 MiB, median of 3)"
    echo
    echo '```'
    "$VFU" migrate --bench --runs 3 2>&1 | tail -4
    echo '```'
}

{
    echo "## vfu bench — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo
    echo "Load average at start: $LOAD_START. Medians of $ROUNDS alternating rounds; ratios against the raw"
    echo "ping-pong (scripts/bench/benchc.c: read the request, write the reply) measured in the same run."
    [ -n "$LVU" ] || echo "libvfio-user rows skipped: set LIBVFIO_USER_SERVER to its samples/server."
    table pinned
    table unpinned
    scaling
    costs
    startup
    allocations
    migration
    echo
    echo "Load average at end: $(load)."
}
