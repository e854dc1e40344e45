#!/usr/bin/env bash
# The qmp-bridge demo, from a fresh Debian 12 machine: installs what is missing, builds, then
# runs a private mosquitto, a real QEMU VM whose thin disk fills up, the bridge and a subscriber
# that prints the stream. Ends by itself and cleans up. --kafka: librdkafka's mock cluster instead
# of mosquitto; --libvirt: the VM is a domain of a private libvirtd, bridged through libvirt.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

packaging/bootstrap-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target qmp-bridge kafka_mock >/dev/null
QB_BIN="$PWD/build/qmp-bridge" QB_BUILD_DIR="$PWD/build" exec /usr/bin/python3 tests/tools/demo.py "$@"
