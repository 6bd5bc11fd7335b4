"""Calling o2o-sidecar from Python: create payment codes (Indomaret, and Alfa Group: Alfamart,
Alfamidi, Lawson, Dan+Dan), follow payment results on a stream that resumes after a reconnect,
and read the rich error details of a failed call.

The functions are the pieces an application uses; `run_flow` strings them together and checks
every answer against the contract, and `main` runs it against a live sidecar:

    python3 clients/python/generate_stubs.py
    python3 clients/python/o2o_example.py \
        --grpc-addr 127.0.0.1:50051 --sim-url http://127.0.0.1:8181

It exits 0 when every step saw what the contract promises and 1 on the first mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "gen"))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from o2o.v1 import o2o_payments_pb2 as pb  # noqa: E402
from o2o.v1 import o2o_payments_pb2_grpc as pb_grpc  # noqa: E402

# ErrorInfo.domain of every error the sidecar returns.
ERROR_DOMAIN = "o2o-sidecar"
# Codes after which the *same* request may be sent again: the sidecar deduplicates on the
# invoice number (and the idempotency key), so a retry never creates a second payment code.
# UNAVAILABLE covers DOKU_UNAVAILABLE, DOKU_OUTCOME_UNKNOWN and STORE_UNAVAILABLE; ABORTED is
# REQUEST_IN_FLIGHT (the same invoice is being created by another call right now).
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# Deadline of one unary call.
CALL_TIMEOUT_S = 15.0
# How long the example waits for an event it expects (the deadline of each stream).
EVENT_TIMEOUT_S = 20.0


class FlowError(Exception):
    """An answer of the sidecar differs from what the contract promises."""


@dataclasses.dataclass
class RpcErrorDetails:
    """The decoded `google.rpc.Status` of a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # (field, description) pairs of a BadRequest, in the order the sidecar listed them.
    field_violations: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # Seconds to wait before retrying, from RetryInfo; None when the sidecar sent none.
    retry_delay_s: float | None = None


def decode_error(err: grpc.RpcError) -> RpcErrorDetails:
    """Reads the code, ErrorInfo, BadRequest and RetryInfo out of a failed call."""
    out = RpcErrorDetails(code=err.code(), message=err.details() or "")
    status = rpc_status.from_call(err)  # None when the server sent no google.rpc.Status
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.field_violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            out.retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
    return out


def generate_payment_code(
    stub: pb_grpc.O2OPaymentsStub,
    request: pb.GeneratePaymentCodeRequest,
    attempts: int = 5,
) -> pb.Payment:
    """Creates a payment code, retrying the identical request while a retry can help.

    After UNAVAILABLE with reason DOKU_OUTCOME_UNKNOWN the sidecar does not know whether DOKU
    issued a code; sending the same request again is the way to find out, and can never create
    a second code.
    """
    backoff_s = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return stub.GeneratePaymentCode(request, timeout=CALL_TIMEOUT_S).payment
        except grpc.RpcError as err:
            details = decode_error(err)
            if details.code not in RETRYABLE or attempt == attempts:
                raise
            time.sleep(details.retry_delay_s if details.retry_delay_s is not None else backoff_s)
            backoff_s = min(backoff_s * 2, 10.0)
    raise AssertionError("unreachable")


def open_stream(stub: pb_grpc.O2OPaymentsStub, resume_token: str = "", invoices=()):
    """Opens StreamNotifications and returns once the sidecar has subscribed it.

    With an empty token only events committed from now on arrive; with a token, every event
    after it is replayed first. The sidecar answers with response headers once the stream is
    subscribed, so waiting for them means no later event can be missed.
    """
    call = stub.StreamNotifications(
        pb.StreamNotificationsRequest(resume_token=resume_token, invoice_numbers=list(invoices)),
        timeout=EVENT_TIMEOUT_S,
    )
    # Blocks until the headers arrive. When the call failed (a bad token), it returns at once
    # and the error is raised by the first next().
    call.initial_metadata()
    return call


def next_event(call) -> pb.StreamNotificationsResponse:
    """The next event of a stream; the stream's deadline bounds the wait."""
    try:
        return next(call)
    except StopIteration:
        raise FlowError("the stream ended without an event") from None


def pay_in_simulator(sim_url: str, invoice: str) -> None:
    """Pays a code through the DOKU simulator's control API (what a customer does at the till)."""
    req = urllib.request.Request(f"{sim_url}/_sim/payments/{invoice}/pay", method="POST")
    with urllib.request.urlopen(req, timeout=CALL_TIMEOUT_S) as resp:
        if resp.status != 200:
            raise FlowError(f"simulator pay {invoice}: HTTP {resp.status}")


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise FlowError(what)


def payment_request(
    invoice: str, amount: int, channel: int = pb.CHANNEL_INDOMARET
) -> pb.GeneratePaymentCodeRequest:
    """A request on `channel`. Both channels take the same fields except the receipt: an
    Indomaret receipt prints a description and a footer, an Alfa Group receipt a footer only
    (a description with CHANNEL_ALFA is INVALID_ARGUMENT)."""
    if channel == pb.CHANNEL_ALFA:
        receipt = pb.Receipt(footer_message="Thank you for shopping")
    else:
        receipt = pb.Receipt(description=f"Order {invoice}", footer_message="Thank you for shopping")
    return pb.GeneratePaymentCodeRequest(
        invoice_number=invoice,
        amount=amount,
        customer=pb.Customer(name="Budi Santoso", email="budi@example.com"),
        info="Order from the Python example",
        receipt=receipt,
        channel=channel,
    )


def check_paid_event(
    resp: pb.StreamNotificationsResponse,
    invoice: str,
    amount: int,
    channel: int = pb.CHANNEL_INDOMARET,
) -> None:
    n = resp.notification
    expect(n.invoice_number == invoice, f"event for {n.invoice_number!r}, expected {invoice!r}")
    expect(
        n.channel == channel,
        f"{invoice}: channel {pb.Channel.Name(n.channel)}, expected {pb.Channel.Name(channel)}",
    )
    expect(
        n.status == pb.PAYMENT_STATUS_PAID,
        f"{invoice}: status {pb.PaymentStatus.Name(n.status)}, expected PAYMENT_STATUS_PAID",
    )
    expect(n.amount == amount, f"{invoice}: amount {n.amount}, expected {amount}")
    expect(n.event_id > 0, f"{invoice}: event_id is 0")
    expect(resp.resume_token != "", f"{invoice}: the event has no resume token")


def check_invalid_argument(stub: pb_grpc.O2OPaymentsStub) -> RpcErrorDetails:
    """Sends a request with four invalid fields and checks the decoded error details."""
    bad = pb.GeneratePaymentCodeRequest(
        invoice_number="", amount=-5, customer=pb.Customer(name="", email="not-an-email")
    )
    try:
        stub.GeneratePaymentCode(bad, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        details = decode_error(err)
    else:
        raise FlowError("an invalid request succeeded")
    expect(
        details.code == grpc.StatusCode.INVALID_ARGUMENT,
        f"code {details.code}, expected INVALID_ARGUMENT",
    )
    expect(details.domain == ERROR_DOMAIN, f"ErrorInfo domain {details.domain!r}")
    expect(details.reason == "INVALID_FIELD", f"ErrorInfo reason {details.reason!r}")
    fields = [f for f, _ in details.field_violations]
    want = ["invoice_number", "amount", "customer.name", "customer.email"]
    expect(fields == want, f"field violations {fields}, expected {want}")
    expect(all(d for _, d in details.field_violations), "a field violation has no description")
    expect(
        details.metadata.get("fields") == ",".join(want),
        f"ErrorInfo metadata {details.metadata}",
    )
    return details


def run_flow(grpc_addr: str, sim_url: str, log=print) -> None:
    """generate → subscribe → pay → PAID event → reconnect with the token after a second
    payment (exactly the missed event, then live again) → decode an INVALID_ARGUMENT."""
    run = uuid.uuid4().hex[:8]
    inv = [f"PY-{run}-{i}" for i in (1, 2, 3)]
    # The third is paid at an Alfa Group store.
    channels = [pb.CHANNEL_INDOMARET, pb.CHANNEL_INDOMARET, pb.CHANNEL_ALFA]
    with grpc.insecure_channel(grpc_addr) as channel:
        stub = pb_grpc.O2OPaymentsStub(channel)

        payments = [
            generate_payment_code(stub, payment_request(i, 150_000 + k, ch))
            for k, (i, ch) in enumerate(zip(inv, channels))
        ]
        for p, i, ch in zip(payments, inv, channels):
            expect(p.invoice_number == i, f"payment for {p.invoice_number!r}, expected {i!r}")
            expect(p.channel == ch, f"{i}: channel {pb.Channel.Name(p.channel)}")
            expect(p.payment_code.isdigit(), f"{i}: payment code {p.payment_code!r} is not digits")
            expect(p.status == pb.PAYMENT_STATUS_PENDING, f"{i}: new payment is not PENDING")
        log(f"ok: generated {len(inv)} payment codes ({payments[0].payment_code}, …)")

        # Only this run's invoices: the filter keeps other callers' events out of this stream.
        stream = open_stream(stub, invoices=inv)
        pay_in_simulator(sim_url, inv[0])
        first = next_event(stream)
        check_paid_event(first, inv[0], 150_000)
        log(f"ok: PAID event {first.notification.event_id} for {inv[0]}")
        stream.cancel()  # disconnect; keep first.resume_token

        status = stub.GetStatus(pb.GetStatusRequest(invoice_number=inv[0]), timeout=CALL_TIMEOUT_S)
        expect(
            status.payment.status == pb.PAYMENT_STATUS_PAID, "GetStatus is not PAID after the event"
        )
        expect(status.payment.HasField("pay_time"), "GetStatus: a PAID payment has no pay_time")

        pay_in_simulator(sim_url, inv[1])  # paid while nobody listens
        resumed = open_stream(stub, resume_token=first.resume_token, invoices=inv)
        missed = next_event(resumed)
        check_paid_event(missed, inv[1], 150_001)
        first_id, missed_id = first.notification.event_id, missed.notification.event_id
        expect(missed_id == first_id + 1, f"resumed at event {missed_id}, expected {first_id + 1}")
        # The resumed stream continues live: the next event is the next payment, so nothing
        # was replayed twice in between.
        pay_in_simulator(sim_url, inv[2])
        live = next_event(resumed)
        check_paid_event(live, inv[2], 150_002, pb.CHANNEL_ALFA)
        live_id = live.notification.event_id
        expect(live_id == missed_id + 1, f"live event {live_id} after {missed_id}")
        resumed.cancel()
        log(f"ok: resumed with the token: exactly the missed event {missed_id}, then live")

        details = check_invalid_argument(stub)
        fields = ", ".join(f for f, _ in details.field_violations)
        log(f"ok: INVALID_ARGUMENT {details.reason}: {fields}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grpc-addr", default="127.0.0.1:50051", help="the sidecar's gRPC address"
    )
    parser.add_argument(
        "--sim-url", default="http://127.0.0.1:8181", help="the simulator of `o2o-sidecar dev`"
    )
    args = parser.parse_args(argv)
    try:
        run_flow(args.grpc_addr, args.sim_url)
    except (FlowError, grpc.RpcError, OSError) as err:
        print(f"python client: FAILED: {err}", file=sys.stderr)
        return 1
    print("python client: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
