#!/usr/bin/env bash
# Puts Prometheus's promtool at DEST/promtool for the tests (rules, metrics), from Debian's
# `prometheus` package: downloaded with apt-get (no root needed) and only that one binary
# extracted; nothing is installed and no service is started. Does nothing when DEST/promtool
# already runs. Exits 77 (ctest: skipped) when the package cannot be had, e.g. offline.
set -euo pipefail

dest=${1:?usage: fetch-promtool.sh DEST}
[ -x "$dest/promtool" ] && "$dest/promtool" --version >/dev/null 2>&1 && exit 0

mkdir -p "$dest"
work=$(mktemp -d "$dest/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1); then
  echo "SKIP fetch-promtool: apt-get download prometheus failed (offline, or no such package)" >&2
  exit 77
fi
deb=$(ls "$work"/prometheus_*.deb)
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/promtool
mv "$work/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version | head -1
