#!/usr/bin/env bash
# Runs the README's walk-through, line for line as printed, against a live `o2o-sidecar dev`
# on its default ports, and checks each answer. Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
cleanup() {
  local rc=$?
  if [[ -n ${dev_pid:-} ]]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  if [[ -n ${stream_pid:-} ]]; then kill "$stream_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# The walk-through block of the README: the lines between "## Walk-through" and the next "## ".
sed -n '/^## Walk-through/,/^## [^W]/p' README.md | grep -E '^(grpcurl|curl) ' > "$work/lines"
stream_line=$(grep 'StreamNotifications' "$work/lines")
# INV-1001 at Indomaret (the default channel), INV-1002 at an Alfa Group store.
generate_line=$(grep 'GeneratePaymentCode' "$work/lines" | grep 'INV-1001')
pay_line=$(grep '/_sim/payments/INV-1001/pay' "$work/lines")
status_line=$(grep 'GetStatus' "$work/lines" | grep 'INV-1001')
alfa_generate_line=$(grep 'GeneratePaymentCode' "$work/lines" | grep 'INV-1002')
alfa_pay_line=$(grep '/_sim/payments/INV-1002/pay' "$work/lines")
alfa_status_line=$(grep 'GetStatus' "$work/lines" | grep 'INV-1002')
for l in stream_line generate_line pay_line status_line alfa_generate_line alfa_pay_line alfa_status_line; do
  [[ -n ${!l} ]] || { echo "walkthrough: README has no $l" >&2; exit 1; }
done

cargo build --locked --quiet --bin o2o-sidecar
target/debug/o2o-sidecar dev --http-addr 127.0.0.1:8080 --admin-addr 127.0.0.1:9090 \
  >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!

# The sidecar logs one line when every listener is bound and serving.
for _ in $(seq 1 200); do
  grep -q "o2o-sidecar serving" "$work/dev.err" && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.err" >&2; exit 1; }
  sleep 0.1
done
grep -q "o2o-sidecar serving" "$work/dev.err" || { echo "dev did not start" >&2; cat "$work/dev.err" >&2; exit 1; }

# The banner must print the same lines as the README.
while IFS= read -r line; do
  grep -qxF -- "$line" "$work/dev.out" || { echo "dev banner lacks the README line: $line" >&2; cat "$work/dev.out" >&2; exit 1; }
done <"$work/lines"

check() { # name, file, pattern
  if ! grep -q -- "$3" "$2"; then
    echo "walkthrough: $1: expected /$3/ in:" >&2; cat "$2" >&2; exit 1
  fi
  echo "ok: $1"
}

eval "${stream_line/grpcurl /grpcurl -max-time 20 }" >"$work/stream.out" 2>&1 &
stream_pid=$!
grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check >"$work/health.out"
check "health" "$work/health.out" '"SERVING"'
# Wait until the stream is open (the sidecar counts open streams), so it cannot miss the event.
for _ in $(seq 1 100); do
  curl -s http://127.0.0.1:9090/metrics | grep -q '^o2o_open_streams 1' && break
  sleep 0.1
done
curl -s http://127.0.0.1:9090/metrics | grep -q '^o2o_open_streams 1' || { echo "stream did not open" >&2; cat "$work/stream.out" >&2; exit 1; }

eval "$generate_line" >"$work/generate.out"
check "GeneratePaymentCode" "$work/generate.out" '"paymentCode": "[0-9]\+"'
check "GeneratePaymentCode status" "$work/generate.out" 'PAYMENT_STATUS_PENDING'

eval "$pay_line" >"$work/pay.out"
check "simulator pay" "$work/pay.out" 'SUCCESS'

eval "$status_line" >"$work/status.out"
check "GetStatus refresh" "$work/status.out" 'PAYMENT_STATUS_PAID'
check "GetStatus channel" "$work/status.out" '"channel": "CHANNEL_INDOMARET"'

eval "$alfa_generate_line" >"$work/alfa-generate.out"
check "Alfa GeneratePaymentCode" "$work/alfa-generate.out" '"paymentCode": "[0-9]\+"'
check "Alfa GeneratePaymentCode channel" "$work/alfa-generate.out" '"channel": "CHANNEL_ALFA"'
check "Alfa how-to-pay page" "$work/alfa-generate.out" '/how-to-pay/v2/alfa-online-to-offline/'
curl -s http://127.0.0.1:8181/_sim/requests >"$work/requests.out"
check "Alfa endpoint called" "$work/requests.out" '"path":"/alfa-online-to-offline/v2/payment-code"'

eval "$alfa_pay_line" >"$work/alfa-pay.out"
check "simulator pay (Alfa)" "$work/alfa-pay.out" 'SUCCESS'

eval "$alfa_status_line" >"$work/alfa-status.out"
check "Alfa GetStatus refresh" "$work/alfa-status.out" 'PAYMENT_STATUS_PAID'
check "Alfa GetStatus channel" "$work/alfa-status.out" '"channel": "CHANNEL_ALFA"'

# A receipt description cannot be printed at an Alfa Group store: refused with a reason.
grpcurl -plaintext -format-error -d '{"invoice_number":"INV-1003","amount":1000,"customer":{"name":"Budi"},"channel":"CHANNEL_ALFA","receipt":{"description":"ORDER 1"}}' \
  127.0.0.1:50051 o2o.v1.O2OPayments/GeneratePaymentCode >"$work/alfa-invalid.out" 2>&1 || true
check "Alfa receipt.description refused" "$work/alfa-invalid.out" '"field": *"receipt.description"'

# grpcurl decodes an INVALID_ARGUMENT's ErrorInfo and BadRequest through reflection alone (the
# sidecar serves the google.rpc descriptors), rather than printing them as base64.
grpcurl -plaintext -format-error -d '{"amount": "-1"}' 127.0.0.1:50051 \
  o2o.v1.O2OPayments/GeneratePaymentCode >"$work/invalid.out" 2>&1 || true
check "INVALID_ARGUMENT ErrorInfo decoded" "$work/invalid.out" '"reason": *"INVALID_FIELD"'
check "INVALID_ARGUMENT BadRequest decoded" "$work/invalid.out" '"field": *"invoice_number"'

# The stream sees the PAID event (wait for it at most until grpcurl's -max-time).
for _ in $(seq 1 100); do grep -q 'PAYMENT_STATUS_PAID' "$work/stream.out" && break; sleep 0.2; done
check "StreamNotifications" "$work/stream.out" 'PAYMENT_STATUS_PAID'
for _ in $(seq 1 100); do grep -q 'CHANNEL_ALFA' "$work/stream.out" && break; sleep 0.2; done
check "StreamNotifications Alfa event" "$work/stream.out" '"channel": "CHANNEL_ALFA"'
check "StreamNotifications token" "$work/stream.out" '"resumeToken"'
echo "walkthrough: all steps passed"
