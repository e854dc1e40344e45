#!/usr/bin/env bash
# Every test of qmp-bridge, from a fresh Debian 12 machine: installs what is missing, builds a
# normal, an ASan+UBSan and a Release build, runs the whole ctest suite (unit + integration) on
# the first two, the integration tests that start the daemon once more under valgrind memcheck,
# every libFuzzer harness for 30 s, and prints the benchmark figures of the Release build.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

packaging/bootstrap-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQB_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
# Release (-O3) finds warnings the other two do not in the daemon's code; the benchmark figures
# come from it. Only what this script runs there is built (the full tree: the bench target).
cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-rel -j"$jobs" --target qmp-bridge bench_pipeline

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
echo "== tests: normal build =="
# -j2: the integration tests mostly wait on QEMU, brokers and the bridge, so two at a time
# halves the wall time on a 2-core machine; none of them asserts timing.
(cd build && ctest -j2 --output-on-failure) || status=1
echo "== tests: ASan+UBSan build =="
# Not again here: tests that run none of the bridge's code (the AsyncAPI document, the Debian
# package built from source, the Kafka mock tool, the libvirtd harness, the include graph), and
# the benchmark's smoke run (a measuring tool; every path it drives has its integration test).
(cd build-asan && ctest -j2 --output-on-failure -E \
  '^(integration_asyncapi|integration_debian_package|integration_kafka_mock_tool|integration_libvirt_harness|layers|bench_scenarios_smoke)$') \
  || status=1
echo "== tests: daemon-starting integration tests once more, under valgrind memcheck =="
# memory_bound measures resident memory, which memcheck's own bookkeeping swamps (the test then
# only reports it); its floods run under valgrind in hostile_qmp too.
(cd build && QB_VALGRIND=1 QB_TIMEOUT_SCALE=4 ctest -L daemon -E '^integration_memory_bound$' \
  --output-on-failure -j2) || status=1
echo "== fuzzing (libFuzzer + ASan/UBSan, ${QB_FUZZ_SECONDS:-30} s per harness) =="
tests/fuzz/run-fuzzers.sh "${QB_FUZZ_SECONDS:-30}" || status=1
# The end-to-end scenarios (`cmake --build build-rel --target bench`, ~5 minutes) are the
# benchmark command of docs/benchmarks.md; ctest above ran their smoke version. Here: the hot
# path's per-event cost against jansson parse-only, a few seconds.
echo "== benchmark: hot path vs jansson parse-only (Release build; figures only) =="
build-rel/tests/bench_pipeline -n 300000 -o build-rel/bench-pipeline.json || status=1
exit $status
