#!/usr/bin/env bash
# Copies of the built-in templates at git revisions, for benchmarks/ab.py on the lent GPU machine, which gets the
# working tree and not the history: .ab/NAME/agent/builtin for each NAME=REV (a REV alone is its own name).
#   scripts/ab_bases.sh head=HEAD aa=HEAD prefetch-tile-info
#   (device, carrying ".ab") python benchmarks/ab.py --base head=.ab/head --base aa=.ab/aa \
#       --base prefetch-tile-info=.ab/prefetch-tile-info --case "key_padding 2x16x8192x128 BM128 BN128 w4 s2 gluon persistent"
# Each copy is made afresh, so an A/B never times a stale one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: scripts/ab_bases.sh NAME=REV... (or REV)" >&2; exit 2; }
grep -qx "/.ab/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.ab/" >> .git/info/exclude; }
for base in "$@"; do
  name=${base%%=*} rev=${base#*=}
  [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "not a folder name: $name (give NAME=REV)" >&2; exit 2; }
  git rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "no such revision: $rev" >&2; exit 2; }
  rm -rf ".ab/$name" && mkdir -p ".ab/$name"
  git archive "$rev" agent/builtin | tar -x -C ".ab/$name"
  echo ".ab/$name: agent/builtin at $(git rev-parse --short "$rev")"
done
