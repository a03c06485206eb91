# syntax=docker/dockerfile:1
#
# The ckb-operator image: the release binary on a minimal runtime with a CA bundle.
#   docker build -t ghcr.io/ckb-dev/ckb-operator:0.1.0 .
# The chart's default image is ghcr.io/ckb-dev/ckb-operator:<chart appVersion>.

# --- build ---------------------------------------------------------------------------------
# Debian bookworm builder: same glibc (2.36) as the distroless runtime below.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# aws-lc-sys (the one TLS crypto provider) builds with the C compiler the image already has.
COPY . .
# NB: cache mounts keep the registry and target/ between builds; the binary is copied out of the
# cache so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ckb-operator \
    && install -D -m 0755 target/release/ckb-operator /out/ckb-operator

# --- runtime -------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and /etc/ssl/certs/ca-certificates.crt (reqwest 0.13 and the Azure
# SDK trust the OS store; there are no bundled roots), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ckb-operator /ckb-operator
# 65532 is distroless's "nonroot"; the chart's securityContext uses the same ids.
USER 65532:65532
# Webhook (HTTPS) and metrics/probes (HTTP); the chart sets both ports.
EXPOSE 9443 8080
ENTRYPOINT ["/ckb-operator", "run"]
