#!/usr/bin/env bash
# Every test of qmp-bridge, from a fresh Debian 12 machine: installs what is missing, builds a
# normal and an ASan+UBSan build, and runs the whole ctest suite (unit + integration) on both.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

packaging/bootstrap-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQB_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
echo "== tests: normal build =="
(cd build && ctest --output-on-failure --timeout 600) || status=1
echo "== tests: ASan+UBSan build =="
(cd build-asan && ctest --output-on-failure --timeout 600) || status=1
exit $status
