#!/usr/bin/env bash
# The import contracts of pyproject.toml ([tool.importlinter]) over the installed layout: setuptools maps
# integrations/ and triton_kernels/ into surf_accel, so the check runs on a tree of links that has them
# there (grimp reads the files under the package's folder).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/surf_accel"
for entry in "$ROOT"/surf_accel/*; do ln -s "$entry" "$TREE/surf_accel/"; done
ln -sfn "$ROOT/integrations" "$TREE/surf_accel/integrations"
ln -sfn "$ROOT/triton_kernels" "$TREE/surf_accel/triton_kernels"
cd "$TREE"
PYTHONPATH="$TREE" lint-imports --config "$ROOT/pyproject.toml" --no-cache
