package id.o2o.example;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import id.o2o.sidecar.v1.Channel;
import id.o2o.sidecar.v1.Customer;
import id.o2o.sidecar.v1.GeneratePaymentCodeRequest;
import id.o2o.sidecar.v1.GetStatusRequest;
import id.o2o.sidecar.v1.GetStatusResponse;
import id.o2o.sidecar.v1.Notification;
import id.o2o.sidecar.v1.O2OPaymentsGrpc;
import id.o2o.sidecar.v1.Payment;
import id.o2o.sidecar.v1.PaymentStatus;
import id.o2o.sidecar.v1.Receipt;
import id.o2o.sidecar.v1.StreamNotificationsRequest;
import id.o2o.sidecar.v1.StreamNotificationsResponse;
import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Calls o2o-sidecar from Java: creates payment codes at Indomaret and at Alfa Group stores
 * (Alfamart, Alfamidi, Lawson, Dan+Dan), follows payment results on a
 * stream that resumes after a reconnect, and reads the rich error details of a failed call.
 * Every answer is checked against the contract; the program exits 1 on the first mismatch.
 *
 * <p>Build it with {@code clients/java/build.sh}, then run it against {@code o2o-sidecar dev}:
 *
 * <pre>
 * java -cp "clients/java/build/classes:/usr/share/java/*" id.o2o.example.PaymentsExample \
 *     --grpc-addr 127.0.0.1:50051 --sim-url http://127.0.0.1:8181
 * </pre>
 */
public final class PaymentsExample {
  /** ErrorInfo.domain of every error the sidecar returns. */
  static final String ERROR_DOMAIN = "o2o-sidecar";
  /** Deadline of one unary call, in seconds. */
  static final long CALL_TIMEOUT_S = 15;
  /** How long a stream waits for an event the example expects, in seconds. */
  static final long EVENT_TIMEOUT_S = 20;

  /**
   * Codes after which the <em>same</em> request may be sent again: the sidecar deduplicates on
   * the invoice number (and idempotency key), so a retry never creates a second payment code.
   * UNAVAILABLE covers DOKU_UNAVAILABLE, DOKU_OUTCOME_UNKNOWN and STORE_UNAVAILABLE; ABORTED is
   * REQUEST_IN_FLIGHT (another call is creating the same invoice right now).
   */
  static final Set<Status.Code> RETRYABLE =
      EnumSet.of(Status.Code.UNAVAILABLE, Status.Code.ABORTED, Status.Code.DEADLINE_EXCEEDED);

  private PaymentsExample() {}

  /** The decoded google.rpc.Status of a failed call. */
  static final class RpcErrorDetails {
    Status.Code code;
    String message = "";
    String reason = "";
    String domain = "";
    Map<String, String> metadata = Map.of();
    /** The BadRequest's field violations, in the sidecar's order. */
    List<BadRequest.FieldViolation> fieldViolations = List.of();
    /** RetryInfo's delay; null when the sidecar sent none. */
    Duration retryDelay;

    List<String> fields() {
      List<String> out = new ArrayList<>();
      for (BadRequest.FieldViolation v : fieldViolations) {
        out.add(v.getField());
      }
      return out;
    }
  }

  /** Reads the code, ErrorInfo, BadRequest and RetryInfo out of a failed call. */
  static RpcErrorDetails decodeError(Status status, Metadata trailers) {
    RpcErrorDetails out = new RpcErrorDetails();
    out.code = status.getCode();
    out.message = status.getDescription() == null ? "" : status.getDescription();
    com.google.rpc.Status rich = StatusProto.fromStatusAndTrailers(status, trailers);
    if (rich == null) {
      return out;
    }
    try {
      for (Any detail : rich.getDetailsList()) {
        if (detail.is(ErrorInfo.class)) {
          ErrorInfo info = detail.unpack(ErrorInfo.class);
          out.reason = info.getReason();
          out.domain = info.getDomain();
          out.metadata = info.getMetadataMap();
        } else if (detail.is(BadRequest.class)) {
          out.fieldViolations = detail.unpack(BadRequest.class).getFieldViolationsList();
        } else if (detail.is(RetryInfo.class)) {
          com.google.protobuf.Duration d = detail.unpack(RetryInfo.class).getRetryDelay();
          out.retryDelay = Duration.ofSeconds(d.getSeconds(), d.getNanos());
        }
      }
    } catch (InvalidProtocolBufferException e) {
      throw new IllegalStateException("undecodable error detail", e);
    }
    return out;
  }

  static RpcErrorDetails decodeError(StatusRuntimeException e) {
    return decodeError(e.getStatus(), e.getTrailers());
  }

  /**
   * Creates a payment code, retrying the identical request while a retry can help. After
   * DOKU_OUTCOME_UNKNOWN the sidecar does not know whether DOKU issued a code; sending the same
   * request again finds out and can never create a second code.
   */
  static Payment generatePaymentCode(
      O2OPaymentsGrpc.O2OPaymentsBlockingStub stub, GeneratePaymentCodeRequest request)
      throws InterruptedException {
    final int attempts = 5;
    Duration backoff = Duration.ofMillis(500);
    for (int attempt = 1; ; attempt++) {
      try {
        return stub.withDeadlineAfter(CALL_TIMEOUT_S, TimeUnit.SECONDS)
            .generatePaymentCode(request)
            .getPayment();
      } catch (StatusRuntimeException e) {
        RpcErrorDetails details = decodeError(e);
        if (!RETRYABLE.contains(details.code) || attempt == attempts) {
          throw e;
        }
        Thread.sleep((details.retryDelay != null ? details.retryDelay : backoff).toMillis());
        backoff = backoff.multipliedBy(2);
      }
    }
  }

  /**
   * One StreamNotifications call. {@link #open} returns once the sidecar has subscribed the
   * stream: the sidecar sends the response headers then, so no later event can be missed. An
   * empty token streams events from now on; a token replays every event after it first.
   * Received events wait in a queue; {@link #cancel} disconnects.
   */
  static final class EventStream {
    /** A received event, or the end of the call. */
    private record Item(StreamNotificationsResponse event, Status status, Metadata trailers) {}

    private final BlockingQueue<Item> items = new LinkedBlockingQueue<>();
    private final CompletableFuture<Void> subscribed = new CompletableFuture<>();
    private ClientCall<StreamNotificationsRequest, StreamNotificationsResponse> call;

    static EventStream open(ManagedChannel channel, String token, List<String> invoices)
        throws Exception {
      EventStream s = new EventStream();
      s.call =
          channel.newCall(
              O2OPaymentsGrpc.getStreamNotificationsMethod(),
              CallOptions.DEFAULT.withDeadlineAfter(EVENT_TIMEOUT_S, TimeUnit.SECONDS));
      s.call.start(
          new ClientCall.Listener<>() {
            @Override
            public void onHeaders(Metadata headers) {
              s.subscribed.complete(null);
            }

            @Override
            public void onMessage(StreamNotificationsResponse message) {
              s.items.add(new Item(message, null, null));
              s.call.request(1);
            }

            @Override
            public void onClose(Status status, Metadata trailers) {
              s.items.add(new Item(null, status, trailers));
              s.subscribed.complete(null); // a failed call has no headers
            }
          },
          new Metadata());
      s.call.sendMessage(
          StreamNotificationsRequest.newBuilder()
              .setResumeToken(token)
              .addAllInvoiceNumbers(invoices)
              .build());
      s.call.halfClose();
      s.call.request(1);
      s.subscribed.get(EVENT_TIMEOUT_S, TimeUnit.SECONDS);
      return s;
    }

    /** The next event; throws the call's error if it ended instead. */
    StreamNotificationsResponse next() throws InterruptedException {
      Item item = items.poll(EVENT_TIMEOUT_S + 5, TimeUnit.SECONDS);
      if (item == null) {
        throw new Mismatch("no event within " + EVENT_TIMEOUT_S + " s");
      }
      if (item.event() == null) {
        throw item.status().asRuntimeException(item.trailers());
      }
      return item.event();
    }

    void cancel() {
      call.cancel("disconnecting", null);
    }
  }

  /** Pays a code through the DOKU simulator's control API (what the customer does at the counter). */
  static void payInSimulator(HttpClient http, String simUrl, String invoice) throws Exception {
    HttpRequest request =
        HttpRequest.newBuilder(URI.create(simUrl + "/_sim/payments/" + invoice + "/pay"))
            .timeout(Duration.ofSeconds(CALL_TIMEOUT_S))
            .POST(HttpRequest.BodyPublishers.noBody())
            .build();
    HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
    expect(
        response.statusCode() == 200,
        "simulator pay " + invoice + ": HTTP " + response.statusCode() + ": " + response.body());
  }

  /** An answer that differs from what the contract promises. */
  static final class Mismatch extends RuntimeException {
    Mismatch(String what) {
      super(what);
    }
  }

  static void expect(boolean ok, String what) {
    if (!ok) {
      throw new Mismatch(what);
    }
  }

  /**
   * A request on {@code channel}. Both channels take the same fields except the receipt:
   * Indomaret prints a description and a footer, Alfa Group a footer only (a description with
   * CHANNEL_ALFA is INVALID_ARGUMENT).
   */
  static GeneratePaymentCodeRequest paymentRequest(String invoice, long amount, Channel channel) {
    Receipt.Builder receipt = Receipt.newBuilder().setFooterMessage("Thank you for shopping");
    if (channel != Channel.CHANNEL_ALFA) {
      receipt.setDescription("Order " + invoice);
    }
    return GeneratePaymentCodeRequest.newBuilder()
        .setInvoiceNumber(invoice)
        .setAmount(amount)
        .setCustomer(Customer.newBuilder().setName("Budi Santoso").setEmail("budi@example.com"))
        .setInfo("Order from the Java example")
        .setReceipt(receipt)
        .setChannel(channel)
        .build();
  }

  static void checkPaidEvent(
      StreamNotificationsResponse r, String invoice, long amount, Channel channel) {
    Notification n = r.getNotification();
    expect(
        n.getInvoiceNumber().equals(invoice),
        "event for " + n.getInvoiceNumber() + ", expected " + invoice);
    expect(
        n.getChannel() == channel,
        invoice + ": channel " + n.getChannel() + ", expected " + channel);
    expect(
        n.getStatus() == PaymentStatus.PAYMENT_STATUS_PAID,
        invoice + ": status " + n.getStatus() + ", expected PAYMENT_STATUS_PAID");
    expect(n.getAmount() == amount, invoice + ": amount " + n.getAmount() + ", expected " + amount);
    expect(n.getEventId() > 0, invoice + ": event_id is 0");
    expect(!r.getResumeToken().isEmpty(), invoice + ": the event has no resume token");
  }

  /** Sends a request with four invalid fields and checks the decoded error details. */
  static RpcErrorDetails checkInvalidArgument(O2OPaymentsGrpc.O2OPaymentsBlockingStub stub) {
    GeneratePaymentCodeRequest bad =
        GeneratePaymentCodeRequest.newBuilder()
            .setAmount(-5)
            .setCustomer(Customer.newBuilder().setEmail("not-an-email"))
            .build();
    RpcErrorDetails details;
    try {
      stub.withDeadlineAfter(CALL_TIMEOUT_S, TimeUnit.SECONDS).generatePaymentCode(bad);
      throw new Mismatch("an invalid request succeeded");
    } catch (StatusRuntimeException e) {
      details = decodeError(e);
    }
    List<String> want = List.of("invoice_number", "amount", "customer.name", "customer.email");
    expect(
        details.code == Status.Code.INVALID_ARGUMENT,
        "code " + details.code + ", expected INVALID_ARGUMENT");
    expect(details.domain.equals(ERROR_DOMAIN), "ErrorInfo domain " + details.domain);
    expect(details.reason.equals("INVALID_FIELD"), "ErrorInfo reason " + details.reason);
    expect(
        details.fields().equals(want),
        "field violations " + details.fields() + ", expected " + want);
    for (BadRequest.FieldViolation v : details.fieldViolations) {
      expect(!v.getDescription().isEmpty(), "field violation " + v.getField() + " has no description");
    }
    expect(
        String.join(",", want).equals(details.metadata.get("fields")),
        "ErrorInfo metadata " + details.metadata);
    return details;
  }

  /**
   * generate → subscribe → pay → PAID event → reconnect with the token after a second payment
   * (exactly the missed event, then live again) → decode an INVALID_ARGUMENT.
   */
  static void runFlow(String grpcAddr, String simUrl) throws Exception {
    ManagedChannel channel = ManagedChannelBuilder.forTarget(grpcAddr).usePlaintext().build();
    HttpClient http = HttpClient.newHttpClient();
    try {
      O2OPaymentsGrpc.O2OPaymentsBlockingStub stub = O2OPaymentsGrpc.newBlockingStub(channel);
      String run = UUID.randomUUID().toString().substring(0, 8);
      List<String> inv = List.of("JV-" + run + "-1", "JV-" + run + "-2", "JV-" + run + "-3");
      // The third is paid at an Alfa Group store.
      List<Channel> channels =
          List.of(Channel.CHANNEL_INDOMARET, Channel.CHANNEL_INDOMARET, Channel.CHANNEL_ALFA);
      for (int k = 0; k < inv.size(); k++) {
        String i = inv.get(k);
        Payment p = generatePaymentCode(stub, paymentRequest(i, 150_000 + k, channels.get(k)));
        expect(p.getInvoiceNumber().equals(i), "payment for " + p.getInvoiceNumber() + ", expected " + i);
        expect(p.getChannel() == channels.get(k), i + ": channel " + p.getChannel());
        expect(
            p.getPaymentCode().matches("[0-9]+"),
            i + ": payment code " + p.getPaymentCode() + " is not digits");
        expect(
            p.getStatus() == PaymentStatus.PAYMENT_STATUS_PENDING,
            i + ": new payment is " + p.getStatus());
      }
      System.out.println("ok: generated " + inv.size() + " payment codes");

      // Only this run's invoices: the filter keeps other callers' events out of this stream.
      EventStream stream = EventStream.open(channel, "", inv);
      payInSimulator(http, simUrl, inv.get(0));
      StreamNotificationsResponse first = stream.next();
      stream.cancel(); // disconnect; keep first's resume token
      checkPaidEvent(first, inv.get(0), 150_000, channels.get(0));
      long firstId = first.getNotification().getEventId();
      System.out.println("ok: PAID event " + firstId + " for " + inv.get(0));

      GetStatusResponse status =
          stub.withDeadlineAfter(CALL_TIMEOUT_S, TimeUnit.SECONDS)
              .getStatus(GetStatusRequest.newBuilder().setInvoiceNumber(inv.get(0)).build());
      expect(
          status.getPayment().getStatus() == PaymentStatus.PAYMENT_STATUS_PAID,
          "GetStatus is " + status.getPayment().getStatus() + " after the event");
      expect(status.getPayment().hasPayTime(), "GetStatus: a PAID payment has no pay_time");

      payInSimulator(http, simUrl, inv.get(1)); // paid while nobody listens
      EventStream resumed = EventStream.open(channel, first.getResumeToken(), inv);
      StreamNotificationsResponse missed = resumed.next();
      checkPaidEvent(missed, inv.get(1), 150_001, channels.get(1));
      long missedId = missed.getNotification().getEventId();
      expect(missedId == firstId + 1, "resumed at event " + missedId + ", expected " + (firstId + 1));
      // The resumed stream continues live: the next event is the next payment, so nothing was
      // replayed twice in between.
      payInSimulator(http, simUrl, inv.get(2));
      StreamNotificationsResponse live = resumed.next();
      resumed.cancel();
      checkPaidEvent(live, inv.get(2), 150_002, channels.get(2));
      expect(
          live.getNotification().getEventId() == missedId + 1,
          "live event " + live.getNotification().getEventId() + " after " + missedId);
      System.out.println(
          "ok: resumed with the token: exactly the missed event " + missedId + ", then live");

      RpcErrorDetails details = checkInvalidArgument(stub);
      System.out.println(
          "ok: INVALID_ARGUMENT " + details.reason + ": " + String.join(", ", details.fields()));
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  public static void main(String[] args) {
    String grpcAddr = "127.0.0.1:50051";
    String simUrl = "http://127.0.0.1:8181";
    if (args.length % 2 != 0) {
      System.err.println("usage: PaymentsExample [--grpc-addr HOST:PORT] [--sim-url URL]");
      System.exit(64);
    }
    for (int i = 0; i < args.length; i += 2) {
      switch (args[i]) {
        case "--grpc-addr" -> grpcAddr = args[i + 1];
        case "--sim-url" -> simUrl = args[i + 1];
        default -> {
          System.err.println("usage: PaymentsExample [--grpc-addr HOST:PORT] [--sim-url URL]");
          System.exit(64);
        }
      }
    }
    try {
      runFlow(grpcAddr, simUrl);
    } catch (Mismatch e) {
      System.err.println("java client: FAILED: " + e.getMessage());
      System.exit(1);
    } catch (Exception e) {
      System.err.println("java client: FAILED: " + e);
      System.exit(1);
    }
    System.out.println("java client: all steps passed");
  }
}
