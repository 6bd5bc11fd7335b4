# syntax=docker/dockerfile:1
#
# o2o-sidecar image: both binaries (o2o-sidecar, doku-sim) on a distroless base that has glibc
# (the binaries link it dynamically), CA certificates and a non-root user, and no shell.
#
#   docker build -t o2o-sidecar:0.1.0 .
#   docker run --rm o2o-sidecar:0.1.0 --help
#   docker run --rm --entrypoint /usr/local/bin/doku-sim o2o-sidecar:0.1.0 --help
#
# Kubernetes: see helm/o2o-sidecar (read-only root filesystem: the SQLite file needs a volume).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# Only what the build reads. The proto is compiled by build.rs with a pure-Rust compiler: no
# protoc. tests/ is small and copied so that every target Cargo.toml declares (the `it` test
# target, by path) exists in the builder; only the binaries are built.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && install -D -m 0755 target/release/o2o-sidecar /out/o2o-sidecar \
    && install -D -m 0755 target/release/doku-sim /out/doku-sim

# Debian 12 like the builder, so the glibc the binaries were linked against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="o2o-sidecar" \
      org.opencontainers.image.description="gRPC sidecar for DOKU convenience-store (O2O) payment codes, Indomaret and Alfa Group: signs DOKU calls, verifies notifications, streams payment results." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/ /usr/local/bin/
# 65532 is the base image's `nonroot` user; numeric so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# 50051: gRPC for the app (binds 127.0.0.1 by default: pod-local); 8080: DOKU notifications;
# 9090: admin (/live, /ready, /metrics).
EXPOSE 50051 8080 9090
ENTRYPOINT ["/usr/local/bin/o2o-sidecar"]
CMD ["serve"]
