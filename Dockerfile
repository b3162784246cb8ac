# syntax=docker/dockerfile:1.7
# xks-operator image: a release build on Debian, run on distroless (glibc, no
# shell, no package manager) as the nonroot user 65532.
#
#   docker build -t ghcr.io/xks-operator/xks-operator:0.1.0 .
#
# The binary uses rustls (no OpenSSL), so the distroless "cc" base (glibc +
# libgcc) is all it needs at run time.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The build context is filtered by .dockerignore: Cargo.toml, Cargo.lock,
# src/, examples/ (the demo embeds them with include_str!), crds/, and
# tests/ + benches/ (Cargo resolves every target declared in Cargo.toml).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin xks-operator \
 && install -D -m 0755 target/release/xks-operator /out/xks-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="xks-operator" \
      org.opencontainers.image.description="Kubernetes operator for AWS KMS external key stores (XKS)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/xks-operator /xks-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/xks-operator"]
CMD ["run"]
