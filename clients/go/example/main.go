// Command o2o-example calls o2o-sidecar from Go: it creates payment codes at Indomaret and at
// Alfa Group stores (Alfamart, Alfamidi, Lawson, Dan+Dan), follows
// payment results on a stream that resumes after a reconnect, and reads the rich error details
// of a failed call. Every answer is checked against the contract; it exits 1 on the first
// mismatch.
//
// Build it with clients/go/build.sh, then run it against `o2o-sidecar dev`:
//
//	clients/go/build/o2o-example -grpc-addr 127.0.0.1:50051 -sim-url http://127.0.0.1:8181
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	o2ov1 "github.com/o2o-sidecar/o2o-sidecar/clients/go/o2ov1"
)

// errorDomain is ErrorInfo.domain of every error the sidecar returns.
const errorDomain = "o2o-sidecar"

const (
	// callTimeout is the deadline of one unary call.
	callTimeout = 15 * time.Second
	// eventTimeout bounds how long a stream waits for an event the example expects.
	eventTimeout = 20 * time.Second
)

// RPCError is the decoded google.rpc.Status of a failed call.
type RPCError struct {
	Code     codes.Code
	Message  string
	Reason   string
	Domain   string
	Metadata map[string]string
	// FieldViolations are the BadRequest's fields and descriptions, in the sidecar's order.
	FieldViolations []*errdetails.BadRequest_FieldViolation
	// RetryDelay is RetryInfo's delay; zero when the sidecar sent none.
	RetryDelay time.Duration
}

// DecodeError reads the code, ErrorInfo, BadRequest and RetryInfo out of a failed call.
func DecodeError(err error) RPCError {
	st := status.Convert(err)
	out := RPCError{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			out.Reason, out.Domain, out.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *errdetails.BadRequest:
			out.FieldViolations = d.GetFieldViolations()
		case *errdetails.RetryInfo:
			delay := d.GetRetryDelay()
			out.RetryDelay = time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
		}
	}
	return out
}

// retryable tells whether the *same* request may be sent again: the sidecar deduplicates on
// the invoice number (and idempotency key), so a retry never creates a second payment code.
// UNAVAILABLE covers DOKU_UNAVAILABLE, DOKU_OUTCOME_UNKNOWN and STORE_UNAVAILABLE; ABORTED is
// REQUEST_IN_FLIGHT (another call is creating the same invoice right now).
func retryable(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.Aborted || c == codes.DeadlineExceeded
}

// GeneratePaymentCode creates a payment code, retrying the identical request while a retry
// can help. After DOKU_OUTCOME_UNKNOWN the sidecar does not know whether DOKU issued a code;
// sending the same request again finds out and can never create a second code.
func GeneratePaymentCode(ctx context.Context, c o2ov1.O2OPaymentsClient, req *o2ov1.GeneratePaymentCodeRequest) (*o2ov1.Payment, error) {
	const attempts = 5
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := c.GeneratePaymentCode(callCtx, req)
		cancel()
		if err == nil {
			return resp.GetPayment(), nil
		}
		e := DecodeError(err)
		if !retryable(e.Code) || attempt == attempts {
			return nil, err
		}
		wait := backoff
		if e.RetryDelay > 0 {
			wait = e.RetryDelay
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if backoff < 10*time.Second {
			backoff *= 2
		}
	}
}

// OpenStream opens StreamNotifications and returns once the sidecar has subscribed it: the
// sidecar sends the response headers then, so no later event can be missed. An empty token
// streams events from now on; a token replays every event after it first. Cancel ctx to
// disconnect.
func OpenStream(ctx context.Context, c o2ov1.O2OPaymentsClient, token string, invoices []string) (o2ov1.O2OPayments_StreamNotificationsClient, error) {
	s, err := c.StreamNotifications(ctx, &o2ov1.StreamNotificationsRequest{ResumeToken: token, InvoiceNumbers: invoices})
	if err != nil {
		return nil, err
	}
	if _, err := s.Header(); err != nil {
		return nil, err
	}
	return s, nil
}

// PayInSimulator pays a code through the DOKU simulator's control API (what the customer does
// at the counter).
func PayInSimulator(simURL, invoice string) error {
	resp, err := http.Post(simURL+"/_sim/payments/"+invoice+"/pay", "application/json", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("simulator pay %s: HTTP %d: %s", invoice, resp.StatusCode, body)
	}
	return nil
}

// mismatch is an answer that differs from what the contract promises.
type mismatch struct{ what string }

func (m mismatch) Error() string { return m.what }

func expect(ok bool, format string, args ...interface{}) error {
	if ok {
		return nil
	}
	return mismatch{fmt.Sprintf(format, args...)}
}

// firstError returns the first failed check (Go 1.19 has no errors.Join).
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// paymentRequest is a request on channel. Both channels take the same fields except the
// receipt: Indomaret prints a description and a footer, Alfa Group a footer only (a
// description with CHANNEL_ALFA is INVALID_ARGUMENT).
func paymentRequest(invoice string, amount int64, channel o2ov1.Channel) *o2ov1.GeneratePaymentCodeRequest {
	receipt := &o2ov1.Receipt{Description: "Order " + invoice, FooterMessage: "Thank you for shopping"}
	if channel == o2ov1.Channel_CHANNEL_ALFA {
		receipt = &o2ov1.Receipt{FooterMessage: "Thank you for shopping"}
	}
	return &o2ov1.GeneratePaymentCodeRequest{
		InvoiceNumber: invoice,
		Amount:        amount,
		Customer:      &o2ov1.Customer{Name: "Budi Santoso", Email: "budi@example.com"},
		Info:          "Order from the Go example",
		Receipt:       receipt,
		Channel:       channel,
	}
}

func checkPaidEvent(r *o2ov1.StreamNotificationsResponse, invoice string, amount int64, channel o2ov1.Channel) error {
	n := r.GetNotification()
	return firstError(
		expect(n.GetInvoiceNumber() == invoice, "event for %q, expected %q", n.GetInvoiceNumber(), invoice),
		expect(n.GetChannel() == channel, "%s: channel %s, expected %s", invoice, n.GetChannel(), channel),
		expect(n.GetStatus() == o2ov1.PaymentStatus_PAYMENT_STATUS_PAID, "%s: status %s, expected PAYMENT_STATUS_PAID", invoice, n.GetStatus()),
		expect(n.GetAmount() == amount, "%s: amount %d, expected %d", invoice, n.GetAmount(), amount),
		expect(n.GetEventId() > 0, "%s: event_id is 0", invoice),
		expect(r.GetResumeToken() != "", "%s: the event has no resume token", invoice),
	)
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// checkInvalidArgument sends a request with four invalid fields and checks the decoded details.
func checkInvalidArgument(ctx context.Context, c o2ov1.O2OPaymentsClient) (RPCError, error) {
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := c.GeneratePaymentCode(callCtx, &o2ov1.GeneratePaymentCodeRequest{
		Amount:   -5,
		Customer: &o2ov1.Customer{Email: "not-an-email"},
	})
	if err == nil {
		return RPCError{}, mismatch{"an invalid request succeeded"}
	}
	e := DecodeError(err)
	var fields []string
	for _, v := range e.FieldViolations {
		fields = append(fields, v.GetField())
		if v.GetDescription() == "" {
			return e, mismatch{"field violation " + v.GetField() + " has no description"}
		}
	}
	want := []string{"invoice_number", "amount", "customer.name", "customer.email"}
	return e, firstError(
		expect(e.Code == codes.InvalidArgument, "code %s, expected InvalidArgument", e.Code),
		expect(e.Domain == errorDomain, "ErrorInfo domain %q", e.Domain),
		expect(e.Reason == "INVALID_FIELD", "ErrorInfo reason %q", e.Reason),
		expect(reflect.DeepEqual(fields, want), "field violations %v, expected %v", fields, want),
		expect(e.Metadata["fields"] == strings.Join(want, ","), "ErrorInfo metadata %v", e.Metadata),
	)
}

// runFlow: generate → subscribe → pay → PAID event → reconnect with the token after a second
// payment (exactly the missed event, then live again) → decode an INVALID_ARGUMENT.
func runFlow(ctx context.Context, grpcAddr, simURL string) error {
	conn, err := grpc.DialContext(ctx, grpcAddr, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := o2ov1.NewO2OPaymentsClient(conn)

	run := make([]byte, 4)
	if _, err := rand.Read(run); err != nil {
		return err
	}
	var inv []string
	for i := 1; i <= 3; i++ {
		inv = append(inv, fmt.Sprintf("GO-%s-%d", hex.EncodeToString(run), i))
	}
	// The third is paid at an Alfa Group store.
	channels := []o2ov1.Channel{o2ov1.Channel_CHANNEL_INDOMARET, o2ov1.Channel_CHANNEL_INDOMARET, o2ov1.Channel_CHANNEL_ALFA}
	for k, i := range inv {
		p, err := GeneratePaymentCode(ctx, client, paymentRequest(i, 150_000+int64(k), channels[k]))
		if err != nil {
			return fmt.Errorf("GeneratePaymentCode %s: %w", i, err)
		}
		if err := firstError(
			expect(p.GetInvoiceNumber() == i, "payment for %q, expected %q", p.GetInvoiceNumber(), i),
			expect(p.GetChannel() == channels[k], "%s: channel %s, expected %s", i, p.GetChannel(), channels[k]),
			expect(isDigits(p.GetPaymentCode()), "%s: payment code %q is not digits", i, p.GetPaymentCode()),
			expect(p.GetStatus() == o2ov1.PaymentStatus_PAYMENT_STATUS_PENDING, "%s: new payment is %s", i, p.GetStatus()),
		); err != nil {
			return err
		}
	}
	fmt.Printf("ok: generated %d payment codes\n", len(inv))

	// Only this run's invoices: the filter keeps other callers' events out of this stream.
	streamCtx, disconnect := context.WithTimeout(ctx, eventTimeout)
	stream, err := OpenStream(streamCtx, client, "", inv)
	if err != nil {
		disconnect()
		return fmt.Errorf("StreamNotifications: %w", err)
	}
	if err := PayInSimulator(simURL, inv[0]); err != nil {
		disconnect()
		return err
	}
	first, err := stream.Recv()
	disconnect() // keep first's resume token
	if err != nil {
		return fmt.Errorf("waiting for the PAID event: %w", err)
	}
	if err := checkPaidEvent(first, inv[0], 150_000, channels[0]); err != nil {
		return err
	}
	fmt.Printf("ok: PAID event %d for %s\n", first.GetNotification().GetEventId(), inv[0])

	statusCtx, cancel := context.WithTimeout(ctx, callTimeout)
	st, err := client.GetStatus(statusCtx, &o2ov1.GetStatusRequest{InvoiceNumber: inv[0]})
	cancel()
	if err != nil {
		return fmt.Errorf("GetStatus: %w", err)
	}
	if err := firstError(
		expect(st.GetPayment().GetStatus() == o2ov1.PaymentStatus_PAYMENT_STATUS_PAID, "GetStatus is %s after the event", st.GetPayment().GetStatus()),
		expect(st.GetPayment().GetPayTime() != nil, "GetStatus: a PAID payment has no pay_time"),
	); err != nil {
		return err
	}

	if err := PayInSimulator(simURL, inv[1]); err != nil { // paid while nobody listens
		return err
	}
	resumeCtx, disconnect := context.WithTimeout(ctx, eventTimeout)
	defer disconnect()
	resumed, err := OpenStream(resumeCtx, client, first.GetResumeToken(), inv)
	if err != nil {
		return fmt.Errorf("resuming StreamNotifications: %w", err)
	}
	missed, err := resumed.Recv()
	if err != nil {
		return fmt.Errorf("waiting for the missed event: %w", err)
	}
	firstID := first.GetNotification().GetEventId()
	if err := firstError(
		checkPaidEvent(missed, inv[1], 150_001, channels[1]),
		expect(missed.GetNotification().GetEventId() == firstID+1, "resumed at event %d, expected %d", missed.GetNotification().GetEventId(), firstID+1),
	); err != nil {
		return err
	}
	// The resumed stream continues live: the next event is the next payment, so nothing was
	// replayed twice in between.
	if err := PayInSimulator(simURL, inv[2]); err != nil {
		return err
	}
	live, err := resumed.Recv()
	if err != nil {
		return fmt.Errorf("waiting for the live event: %w", err)
	}
	if err := firstError(
		checkPaidEvent(live, inv[2], 150_002, channels[2]),
		expect(live.GetNotification().GetEventId() == firstID+2, "live event %d after %d", live.GetNotification().GetEventId(), firstID+1),
	); err != nil {
		return err
	}
	disconnect()
	fmt.Printf("ok: resumed with the token: exactly the missed event %d, then live\n", missed.GetNotification().GetEventId())

	e, err := checkInvalidArgument(ctx, client)
	if err != nil {
		return err
	}
	var fields []string
	for _, v := range e.FieldViolations {
		fields = append(fields, v.GetField())
	}
	fmt.Printf("ok: INVALID_ARGUMENT %s: %s\n", e.Reason, strings.Join(fields, ", "))
	return nil
}

func main() {
	grpcAddr := flag.String("grpc-addr", "127.0.0.1:50051", "the sidecar's gRPC address")
	simURL := flag.String("sim-url", "http://127.0.0.1:8181", "the DOKU simulator of `o2o-sidecar dev`")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := runFlow(ctx, *grpcAddr, *simURL); err != nil {
		fmt.Fprintf(os.Stderr, "go client: FAILED: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("go client: all steps passed")
}
