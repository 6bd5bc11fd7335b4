"""The Python caller against a live `o2o-sidecar dev`: each step of the example on its own, then
the example's whole flow as a user runs it."""

import uuid

import grpc
import pytest

import o2o_example as ex
from o2o.v1 import o2o_payments_pb2 as pb
from o2o.v1 import o2o_payments_pb2_grpc as pb_grpc


@pytest.fixture
def stub(sidecar):
    with grpc.insecure_channel(sidecar.grpc_addr) as channel:
        yield pb_grpc.O2OPaymentsStub(channel)


def invoice(tag: str) -> str:
    return f"PYT-{tag}-{uuid.uuid4().hex[:8]}"


def test_generate_returns_a_pending_code_and_a_retry_returns_the_same_one(stub):
    inv = invoice("gen")
    first = ex.generate_payment_code(stub, ex.payment_request(inv, 25_000))
    assert first.invoice_number == inv
    assert first.payment_code.isdigit()
    assert first.status == pb.PAYMENT_STATUS_PENDING
    assert first.expire_time.seconds > first.create_time.seconds
    # The same request again (what a retry after a lost answer sends) gets the same code.
    again = ex.generate_payment_code(stub, ex.payment_request(inv, 25_000))
    assert again.payment_code == first.payment_code


def test_the_same_invoice_with_other_parameters_is_already_exists(stub):
    inv = invoice("dup")
    ex.generate_payment_code(stub, ex.payment_request(inv, 25_000))
    with pytest.raises(grpc.RpcError) as raised:
        ex.generate_payment_code(stub, ex.payment_request(inv, 26_000))
    details = ex.decode_error(raised.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert (details.domain, details.reason) == (ex.ERROR_DOMAIN, "INVOICE_EXISTS")
    assert details.metadata["invoice_number"] == inv


def test_a_paid_code_reaches_the_stream_and_a_reconnect_gets_exactly_the_missed_event(
    sidecar, stub
):
    a, b = invoice("a"), invoice("b")
    for inv in (a, b):
        ex.generate_payment_code(stub, ex.payment_request(inv, 10_000))
    stream = ex.open_stream(stub, invoices=[a, b])
    ex.pay_in_simulator(sidecar.sim_url, a)
    first = ex.next_event(stream)
    stream.cancel()
    assert first.notification.invoice_number == a
    assert first.notification.status == pb.PAYMENT_STATUS_PAID
    assert first.notification.source == pb.SOURCE_DOKU_NOTIFICATION
    assert first.notification.doku_request_id

    ex.pay_in_simulator(sidecar.sim_url, b)
    resumed = ex.open_stream(stub, resume_token=first.resume_token, invoices=[a, b])
    missed = ex.next_event(resumed)
    resumed.cancel()
    assert missed.notification.invoice_number == b
    assert missed.notification.event_id == first.notification.event_id + 1
    assert missed.resume_token != first.resume_token


def test_an_invalid_request_lists_every_field_violation(stub):
    details = ex.check_invalid_argument(stub)
    assert details.retry_delay_s is None  # fixing the request helps, waiting does not


def test_a_malformed_resume_token_is_invalid_argument(stub):
    stream = ex.open_stream(stub, resume_token="not-a-token")
    with pytest.raises(grpc.RpcError) as raised:
        ex.next_event(stream)
    details = ex.decode_error(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "RESUME_TOKEN_INVALID"


def test_an_unknown_invoice_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetStatus(
            pb.GetStatusRequest(invoice_number=invoice("none")), timeout=ex.CALL_TIMEOUT_S
        )
    details = ex.decode_error(raised.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "PAYMENT_NOT_FOUND"


def test_the_example_runs_its_whole_flow(sidecar, capsys):
    assert ex.main(["--grpc-addr", sidecar.grpc_addr, "--sim-url", sidecar.sim_url]) == 0
    assert "python client: all steps passed" in capsys.readouterr().out
