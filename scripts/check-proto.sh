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
# The newest commit that changed the contract, compared with the contract just before it: a
# wire- or JSON-incompatible change fails here, however many commits come after it.
last=$(git log -1 --format=%H -- proto/ 2>/dev/null || true)
if [[ -n $last ]] && git rev-parse --verify -q "$last^1" >/dev/null; then
  before=$(git rev-parse "$last^1")
  if git cat-file -e "$before:proto/o2o/v1/o2o_payments.proto" 2>/dev/null; then
    $buf breaking --against ".git#ref=$before"
    echo "buf breaking against ${before:0:12} (before the last contract change): clean"
  else
    echo "buf breaking: the contract is new in ${last:0:12}; nothing to compare"
  fi
fi
