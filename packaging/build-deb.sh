#!/usr/bin/env bash
# Builds the Debian package of qmp-bridge: packaging/build-deb.sh [OUTPUT_DIR]
#
# The Debian packaging lives in packaging/debian/, but dpkg-buildpackage wants it at
# debian/ in the source tree. So this copies the source tree (without build directories
# and .git) to a scratch directory, puts packaging/debian there as debian/, and runs
#   dpkg-buildpackage -us -uc -b
# The .deb, .buildinfo and .changes end up in OUTPUT_DIR (default: build-deb/ in the
# repository, which .gitignore covers as /build*/).
# Nothing else in the repository is touched. Needs the Build-Depends of packaging/debian/control
# (packaging/bootstrap-deps.sh installs them) and about a minute on two cores.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$src/build-deb}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

scratch="$(mktemp -d /tmp/qmp-bridge-deb.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
tree="$scratch/qmp-bridge"
mkdir "$tree"

# Everything but build trees, VCS data, Python caches and an earlier debian/.
tar -C "$src" --exclude='./build*' --exclude='./obj-*' --exclude='./.git' \
    --exclude='__pycache__' --exclude='./debian' -cf - . |
    tar -C "$tree" -xf -
cp -r "$src/packaging/debian" "$tree/debian"

(
    cd "$tree"
    # -j2: the machines this is built on are small and shared.
    dpkg-buildpackage -us -uc -b -j"${QB_DEB_JOBS:-2}"
)

# dpkg-buildpackage writes its results next to the source tree.
shopt -s nullglob
results=("$scratch"/*.deb "$scratch"/*.buildinfo "$scratch"/*.changes)
[ ${#results[@]} -gt 0 ] || { echo "build-deb: no package was produced" >&2; exit 1; }
cp "${results[@]}" "$out/"
for f in "${results[@]}"; do
    echo "$out/$(basename "$f")"
done
