# syntax=docker/dockerfile:1.7
# Two images from one workspace, each a release build on Debian run on
# distroless (glibc, no shell, no package manager) as the nonroot user 65532:
#
#   docker build --target operator -t ghcr.io/xks-operator/xks-operator:0.1.0 .
#   docker build --target emulator -t ghcr.io/xks-operator/xks-emulator:0.1.0 .
#
# The operator is built with --no-default-features: the image the Helm chart
# runs carries neither the emulator nor the benchmark harness. Both binaries
# use rustls (no OpenSSL), so the distroless "cc" base is all they need.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The build context is filtered by .dockerignore: the workspace manifests,
# src/, emulator/, examples/ (the demo embeds them with include_str!), docs/
# (the emulator's tests read its documented config), crds/ and tests/
# (Cargo resolves every target declared in a manifest).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p xks-operator --no-default-features --bin xks-operator \
 && cargo build --release --locked -p xks-emulator --bin xks-emulator \
 && install -D -m 0755 target/release/xks-operator /out/xks-operator \
 && install -D -m 0755 target/release/xks-emulator /out/xks-emulator

FROM gcr.io/distroless/cc-debian12:nonroot AS emulator
LABEL org.opencontainers.image.title="xks-emulator" \
      org.opencontainers.image.description="AWS KMS custom-key-store (XKS) emulator and XKS proxy emulator, for tests" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/xks-emulator /xks-emulator
USER 65532:65532
EXPOSE 4566
ENTRYPOINT ["/xks-emulator", "--listen", "0.0.0.0:4566"]

# Last, so that a plain `docker build .` builds the operator.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
LABEL org.opencontainers.image.title="xks-operator" \
      org.opencontainers.image.description="Kubernetes operator for AWS KMS external key stores (XKS)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/xks-operator /xks-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/xks-operator"]
CMD ["run"]
