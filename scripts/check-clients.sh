#!/usr/bin/env bash
# Runs the Python, Go and Java callers (clients/) against live `o2o-sidecar dev` instances on
# free ports: each generates payment codes, streams, pays through the simulator, receives the
# PAID event, resumes with its token after a reconnect and decodes an INVALID_ARGUMENT's
# field violations. Installs what it needs (Debian packages, pip). Exits non-zero on any
# mismatch.
#
# The README's grpcurl lines (scripts/walkthrough.sh) and buf lint/format/breaking
# (scripts/check-proto.sh) are separate checks in scripts/test.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# Go and Java come from Debian's packages (see /work/shared/tooling.md): no module proxy or
# Maven Central. golang-github-golang-protobuf-1-5-dev, not 1-3: the 1-3 package compiles but
# panics at run time on the generated (APIv2) messages.
apt_packages=(
  protobuf-compiler
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev
  openjdk-17-jdk-headless protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java
  libnetty-java libperfmark-java libguava-java libgeronimo-annotation-1.3-spec-java
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r clients/python/requirements.txt

work=$(mktemp -d)
dev_pid=""
stop_dev() {
  if [[ -n $dev_pid ]]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  dev_pid=""
}
cleanup() {
  local rc=$?
  stop_dev
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# Starts `o2o-sidecar dev` on port 0 with its store in $work/NAME; sets grpc_addr and sim_url
# from the log line (stderr) and the banner (stdout).
start_dev() {
  local name=$1
  mkdir -p "$work/$name"
  target/debug/o2o-sidecar dev --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --admin-addr 127.0.0.1:0 --sim-addr 127.0.0.1:0 --store "sqlite://$work/$name/o2o.db" \
    >"$work/$name/dev.out" 2>"$work/$name/dev.err" &
  dev_pid=$!
  for _ in $(seq 1 300); do
    grep -q "o2o-sidecar serving" "$work/$name/dev.err" && break
    kill -0 "$dev_pid" 2>/dev/null || break
    sleep 0.1
  done
  grpc_addr=$(grep -o 'o2o-sidecar serving grpc_addr=[^ ]*' "$work/$name/dev.err" | head -1 | sed 's/.*grpc_addr=//')
  sim_url=$(grep -o 'DOKU simulator *http://[^ ]*' "$work/$name/dev.out" | head -1 | grep -o 'http://.*')
  if [[ -z $grpc_addr || -z $sim_url ]]; then
    echo "clients: o2o-sidecar dev did not start" >&2
    cat "$work/$name/dev.out" "$work/$name/dev.err" >&2
    exit 1
  fi
}

# Runs one client against a fresh sidecar; shows the sidecar's log if the client fails.
run_client() {
  local name=$1
  shift
  start_dev "$name"
  if ! "$@" --grpc-addr "$grpc_addr" --sim-url "$sim_url"; then
    echo "clients: the $name client failed; sidecar log:" >&2
    tail -n 40 "$work/$name/dev.err" >&2
    exit 1
  fi
  stop_dev
}

echo "-- build the sidecar"
cargo build --locked --quiet --bin o2o-sidecar
export O2O_SIDECAR_BIN=$repo/target/debug/o2o-sidecar

echo "-- Python (pytest; stubs generated from proto/)"
python3 -m pytest -q -p no:cacheprovider clients/python

echo "-- Go (Debian's Go packages, GOPATH mode)"
bash clients/go/build.sh
unformatted=$(gofmt -l clients/go/example)
[[ -z $unformatted ]] || { echo "clients: gofmt would change: $unformatted" >&2; exit 1; }
(cd clients/go/example && GO111MODULE=off GOPATH="$repo/clients/go/build/gopath:/usr/share/gocode" go vet .)
run_client go clients/go/build/o2o-example

echo "-- Java (Debian's grpc-java jars, javac)"
bash clients/java/build.sh
run_client java java -cp "$(bash clients/java/build.sh --classpath)" id.o2o.example.PaymentsExample

echo "clients: Python, Go and Java callers passed against a live sidecar"
