#!/usr/bin/env bash
# Lints and format-checks the proto with buf (npm @bufbuild/buf, installed into a cache dir),
# and once main has a previous version, checks the contract for wire/JSON-breaking changes.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${O2O_TOOLS_DIR:-$HOME/.cache/o2o-sidecar-tools}
if [[ ! -x $tools/node_modules/.bin/buf ]]; then
  mkdir -p "$tools"
  npm install --silent --prefix "$tools" @bufbuild/buf@1 >/dev/null
fi
buf=$tools/node_modules/.bin/buf
$buf lint
$buf format -d --exit-code
echo "buf lint and format: clean"
if git rev-parse --verify -q origin/main >/dev/null; then
  $buf breaking --against '.git#branch=origin/main'
  echo "buf breaking against origin/main: clean"
fi
