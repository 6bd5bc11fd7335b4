// Package o2ov1 holds the Go stubs of the o2o.v1 contract (proto/o2o/v1/o2o_payments.proto),
// import path github.com/o2o-sidecar/o2o-sidecar/clients/go/o2ov1 as the proto's go_package
// says. The generated files are not checked in: `buf generate` (buf.gen.yaml at the
// repository root) writes o2o_payments.pb.go and o2o_payments_grpc.pb.go here.
package o2ov1
