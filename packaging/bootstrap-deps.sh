#!/usr/bin/env bash
# Installs the Debian packages qmp-bridge needs to build, test and run its demo, if any is
# missing. Idempotent and quiet when everything is there; needs root (or sudo) otherwise.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config
  librdkafka-dev libmosquitto-dev libjansson-dev libyaml-dev libuv1-dev
  libssl-dev libsystemd-dev uthash-dev zlib1g-dev libmicrohttpd-dev libjemalloc-dev
  # the libvirt source: libvirt's client libraries and libxml2 for the domain XML
  libvirt-dev libxml2-dev
  # tests and demo: real QEMU, real mosquitto, kcat, the schema validator, the guest assembler
  libcmocka-dev qemu-system-x86 qemu-utils mosquitto mosquitto-clients kcat
  python3 python3-jsonschema binutils util-linux
  # the JavaScript signing recipe (examples/sign_command.js) against the test vectors; the
  # contract tests (docs/asyncapi.yaml, the CloudEvents SDK) under node, npm below
  nodejs
  # a real libvirtd for the libvirt source's tests and demo (started in a private mount
  # namespace by the tests; no host libvirt service is set up or touched)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  # RabbitMQ's MQTT plugin (integration_rabbitmq starts a private node; no service is left running)
  rabbitmq-server
  # fuzzing (libFuzzer comes with clang), the memcheck pass, the Debian package and its checks
  clang valgrind debhelper dpkg-dev fakeroot lintian
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# npm installs the contract tests' packages (tests/contract, pinned by its lock file) into the
# build. Debian's package only when there is no npm at all: a nodejs from elsewhere that
# brings its own npm conflicts with it.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "bootstrap: installing missing Debian packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install packages" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# rabbitmq-server's postinst starts the system node (and erlang-base's starts epmd) through
# invoke-rc.d / deb-systemd-invoke; the tests run a node of their own. A policy-rc.d that
# answers 101 ("not now") keeps them from starting during this install, where the machine has
# none of its own (a container usually has one that does the same); on a systemd host the units
# this install enabled are disabled again, so nothing starts at the next boot either.
had_erlang=""
dpkg-query -W -f='${Status}' erlang-base 2>/dev/null | grep -q "install ok installed" && had_erlang=1
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# bootstrap-deps.sh: no service starts while test packages are installed\nexit 101\n' \
    | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi

$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

if [ -d /run/systemd/system ] && printf '%s\n' "${missing[@]}" | grep -qx rabbitmq-server; then
  units=(rabbitmq-server.service)
  [ -n "$had_erlang" ] || units+=(epmd.socket epmd.service)
  $sudo systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
fi
