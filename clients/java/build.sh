#!/usr/bin/env bash
# Generates the Java stubs of o2o.v1 with protoc and Debian's grpc-java plugin, and compiles the
# example with javac against Debian's jars (no Maven Central needed).
# google.rpc (Status, ErrorInfo, BadRequest, RetryInfo) is generated from the copies of
# googleapis' protos in proto/google/rpc/: Debian's proto-google-common-protos jar predates
# ErrorInfo. With Maven or Gradle, depend on com.google.api.grpc:proto-google-common-protos
# instead. Output: clients/java/build/classes; `clients/java/build.sh --classpath` prints the run-time
# class path. Needs: default-jdk-headless protobuf-compiler protobuf-compiler-grpc-java-plugin
# libgrpc-java libprotobuf-java libnetty-java libperfmark-java
# libguava-java libgeronimo-annotation-1.3-spec-java
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
jars=/usr/share/java
classpath=""
for jar in grpc-api grpc-context grpc-core grpc-netty grpc-stub grpc-protobuf grpc-protobuf-lite \
  protobuf guava perfmark-api \
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common \
  netty-handler netty-handler-proxy netty-resolver netty-transport \
  geronimo-annotation-1.3-spec; do
  [[ -f $jars/$jar.jar ]] || { echo "java client: $jars/$jar.jar is missing (see the package list above)" >&2; exit 1; }
  classpath+="${classpath:+:}$jars/$jar.jar"
done
if [[ ${1:-} == --classpath ]]; then
  echo "$here/build/classes:$classpath"
  exit 0
fi
build=$here/build
rm -rf "$build"
mkdir -p "$build/gen" "$build/classes"
protoc -I "$here/../../proto" -I "$here/proto" --java_out="$build/gen" --grpc-java_out="$build/gen" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
  o2o/v1/o2o_payments.proto google/rpc/status.proto google/rpc/error_details.proto
find "$build/gen" "$here/src" -name '*.java' > "$build/sources"
javac -nowarn -d "$build/classes" -cp "$classpath" @"$build/sources"
echo "built $build/classes"
