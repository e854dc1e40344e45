#!/bin/sh
# run-fuzzers.sh - build the libFuzzer harnesses and run each one for a fixed time.
#
#   tests/fuzz/run-fuzzers.sh [seconds-per-harness]
#
# Seconds per harness: the argument, else $QB_FUZZ_SECONDS, else 60.
# Configures and builds <repo>/build-fuzz (clang, -DQB_FUZZ=ON, RelWithDebInfo;
# $QB_FUZZ_BUILD_DIR overrides the directory), then runs every
# tests/fuzz/fuzz_<name>.c harness on a scratch copy of tests/fuzz/corpus/<name>/
# (the committed corpus never grows during a run) with tests/fuzz/<name>.dict
# when it exists, $QB_FUZZ_JOBS harnesses at a time (default: the CPU count;
# anything but a positive integer exits 2).
# Prints one line per harness:
#   fuzz_qmp: 1234567 executions in 60 s, 0 crashes, corpus 35 -> 456 inputs
# Exits 1 when any harness crashed, leaked, timed out or ran out of memory; the
# reproducer is kept in build-fuzz/crashes/ and its path printed, with the
# sanitizer report. Exits 2 when the build fails.
# QB_FUZZ_ONLY="qmp config" runs only those harnesses.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${QB_FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=${1:-${QB_FUZZ_SECONDS:-60}}

case $seconds in
'' | *[!0-9]*)
    echo "run-fuzzers.sh: seconds must be a positive integer, got '$seconds'" >&2
    exit 2
    ;;
esac
if [ "$seconds" -lt 1 ]; then
    echo "run-fuzzers.sh: seconds must be at least 1" >&2
    exit 2
fi

# harnesses run side by side, this many at a time (see below)
jobs=${QB_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
case $jobs in
'' | *[!0-9]* | 0)
    echo "run-fuzzers.sh: QB_FUZZ_JOBS must be a positive integer, got '$jobs'" >&2
    exit 2
    ;;
esac

echo "run-fuzzers.sh: building $build"
mkdir -p "$build"
if ! CC=${QB_FUZZ_CC:-clang} cmake -S "$root" -B "$build" -DQB_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/fuzz-configure.log" 2>&1; then
    tail -n 30 "$build/fuzz-configure.log" >&2
    echo "run-fuzzers.sh: configure failed (full log: $build/fuzz-configure.log)" >&2
    exit 2
fi
if ! cmake --build "$build" -j2 --target qb_fuzzers >"$build/fuzz-build.log" 2>&1; then
    tail -n 60 "$build/fuzz-build.log" >&2
    echo "run-fuzzers.sh: build failed (full log: $build/fuzz-build.log)" >&2
    exit 2
fi

crashes="$build/crashes"
work="$build/fuzz-work"
mkdir -p "$crashes" "$work"
# Sanitizer reports with stacks; UBSan findings are fatal (the code is built without recovery).
# Leaks always count; abort_on_error (run-tests.sh sets it for ctest) is left to libFuzzer,
# which writes the reproducer from the sanitizer's death callback.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:abort_on_error=0"
# fuzz_config makes its sandbox directory here, so a crashed run leaves nothing in /tmp.
export TMPDIR="$work"

count_files() {
    find "$1" -maxdepth 1 -type f | wc -l
}

# Reproducers libFuzzer wrote for harness $1 (crash-, leak-, timeout-, oom-); a slow-unit-
# file is only a hint, not a failure.
list_artifacts() {
    for f in "$crashes/$1"-*; do
        case $f in
        *-slow-unit-*) ;;
        *) if [ -e "$f" ]; then echo "$f"; fi ;;
        esac
    done
}

# Runs harness $1 (fuzz_<short>) and prints its summary; returns non-zero when it found
# something or could not run.
run_harness() {
    name=$1
    short=${name#fuzz_}
    bin="$build/tests/fuzz/$name"
    seeds="$here/corpus/$short"
    corpus="$work/$short/corpus"
    log="$work/$short/fuzz.log"

    if [ ! -x "$bin" ]; then
        echo "$name: not built ($bin missing)"
        return 1
    fi
    rm -rf "${work:?}/$short"
    mkdir -p "$corpus"
    if [ -d "$seeds" ]; then
        cp "$seeds"/* "$corpus"/ 2>/dev/null
    fi
    before=$(count_files "$corpus")
    set -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$crashes/$name-"
    if [ -f "$here/$short.dict" ]; then
        set -- "$@" -dict="$here/$short.dict"
    fi
    old="$work/$short/artifacts-before"
    list_artifacts "$name" >"$old"
    start=$(date +%s)
    "$bin" "$@" "$corpus" >"$log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - start))
    after=$(count_files "$corpus")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ -z "$execs" ]; then
        # No final stats (killed by a crash): the last "#N" status line is close enough.
        execs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    fi
    found=$(list_artifacts "$name" | grep -vxF -f "$old")
    n_found=$(printf '%s' "$found" | grep -c .)
    if [ "$rc" -ne 0 ] && [ "$n_found" -eq 0 ]; then
        n_found=1 # failed without a reproducer (e.g. a crash at start-up): still a failure
    fi
    if [ "$n_found" -eq 1 ]; then word=crash; else word=crashes; fi
    echo "$name: ${execs:-0} executions in $elapsed s, $n_found $word, corpus $before -> $after inputs"
    if [ "$n_found" -ne 0 ]; then
        for f in $found; do
            echo "  reproducer: $f"
            echo "  reproduce:  $bin $f"
        done
        echo "  log: $log (libFuzzer exit status $rc); the report:"
        # From the first sanitizer/libFuzzer error line: the reason and the top of the stack.
        awk '/ERROR|runtime error|WARNING: MemorySanitizer|Sanitizer/ && !n { n = 1 }
             n && n++ <= 30 { print "    " $0; next }
             /^SUMMARY:/ { print "    " $0 }' "$log"
    fi
    [ "$n_found" -eq 0 ]
}

# The harnesses are independent (own corpus copy, own artifact prefix), so they run
# QB_FUZZ_JOBS at a time (default: the CPU count): each still gets its full time, and
# the stage takes a fraction of the wall time. Summaries are printed in harness order.
names=""
for src in "$here"/fuzz_*.c; do
    [ -e "$src" ] || continue
    name=$(basename "$src" .c)
    if [ -n "${QB_FUZZ_ONLY:-}" ]; then
        case " $QB_FUZZ_ONLY " in
        *" ${name#fuzz_} "*) ;;
        *) continue ;;
        esac
    fi
    names="$names $name"
done

status=0
running=0
for name in $names; do
    (
        run_harness "$name" >"$work/$name.summary" 2>&1
        echo $? >"$work/$name.status"
    ) &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait
        running=0
    fi
done
wait
for name in $names; do
    cat "$work/$name.summary"
    if [ "$(cat "$work/$name.status" 2>/dev/null)" != 0 ]; then
        status=1
    fi
    rm -f "$work/$name.summary" "$work/$name.status"
done
exit $status
