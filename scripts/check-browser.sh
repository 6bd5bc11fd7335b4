#!/usr/bin/env bash
# The DOKU simulator's page in a real browser: validates the control API's OpenAPI document,
# then runs tests/browser/sim-page.test.mjs, which starts `o2o-sidecar dev` on free ports and
# drives headless Chromium (Debian's `chromium`, through npm's playwright-core) against it:
# Pay, the counter, Expire, Fail, Resend and the fault form, checked on the page and on a gRPC
# StreamNotifications stream. Installs what is missing (apt `chromium`, `npm ci`, pip
# `openapi-spec-validator`). Exits non-zero on any failure.
#
# SCREENSHOT_DIR=docs bash scripts/check-browser.sh   refreshes the screenshots in docs/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/chromium ]]; then
  echo "installing: chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore openapi-spec-validator
fi

echo "== OpenAPI document of the simulator's control API"
python3 -m openapi_spec_validator src/sim/openapi.json

# `npm ci` when node_modules is missing or was installed from another lock file.
(
  cd tests/browser
  if ! cmp -s package-lock.json node_modules/.installed-from-lock 2>/dev/null; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.installed-from-lock
  fi
)

cargo build --locked --quiet --bin o2o-sidecar
echo "== the simulator's page in headless Chromium"
O2O_SIDECAR_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/o2o-sidecar" node tests/browser/sim-page.test.mjs
