#!/usr/bin/env bash
# Generates the Go stubs of o2o.v1 with protoc and Debian's protoc-gen-go / protoc-gen-go-grpc,
# and builds the example in GOPATH mode against Debian's Go packages (no module proxy needed).
# Output: clients/go/build/o2o-example. Needs: golang-go protobuf-compiler protoc-gen-go
# protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
# golang-github-golang-protobuf-1-5-dev (the 1-3 package compiles but panics at run time).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$here/build
gopath=$build/gopath
rm -rf "$build"
mkdir -p "$gopath/src"
# go_package puts the stubs at github.com/o2o-sidecar/o2o-sidecar/clients/go/o2ov1 in the GOPATH
# (in this repository: clients/go/o2ov1/, where `buf generate` writes them).
protoc -I "$here/../../proto" --go_out="$gopath/src" --go-grpc_out="$gopath/src" o2o/v1/o2o_payments.proto
cd "$here/example"
GO111MODULE=off GOPROXY=off GOPATH="$gopath:/usr/share/gocode" go build -o "$build/o2o-example" .
echo "built $build/o2o-example"
