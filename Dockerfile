# syntax=docker/dockerfile:1
#
# The ckb-operator image, for those who build with a container engine. The project itself builds
# the same image without one: `scripts/image.sh build` (cross-compiled static binaries, assembled
# with crane, reproducible) and `scripts/image.sh verify` check it; the release workflow publishes
# that build. Both describe one image:
#   /ckb-operator                         static (musl) release binary, root-owned 0755
#   /etc/passwd, /etc/group               root and nonroot (65532)
#   /etc/ssl/certs/ca-certificates.crt    Debian's CA bundle (reqwest and kube trust the OS store)
#   /usr/share/doc/ckb-operator/sbom.cdx.json   CycloneDX SBOM of the binary's crates
#   /tmp (1777), /home/nonroot (0700, 65532)
#   user 65532:65532, entrypoint ["/ckb-operator", "run"], ports 9443 (webhook) and 8080 (metrics)
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=<version> --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t ghcr.io/ckb-dev/ckb-operator:<version> .
# The chart's default image is ghcr.io/ckb-dev/ckb-operator:<chart appVersion>.

# --- build (on the build machine's platform, cross-compiling for the target's) ---------------
FROM --platform=$BUILDPLATFORM docker.io/library/rust:1.95-bookworm AS build
ARG TARGETARCH
# The cross toolchain scripts/install-tools.sh cross installs: musl-tools (x86_64), and for arm64
# gcc-aarch64-linux-gnu with musl's arm64 headers and libc (aws-lc-sys is C).
RUN dpkg --add-architecture arm64 \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        musl-tools=1.2.3-1 musl-dev:arm64=1.2.3-1 gcc-aarch64-linux-gnu=4:12.2.0-3 \
        ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
    && cargo install --locked cargo-cyclonedx@0.5.9
ENV CC_x86_64_unknown_linux_musl=x86_64-linux-musl-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-musl-gcc \
    AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
WORKDIR /src
COPY . .
# NB: cache mounts keep the registry and target/ between builds; the outputs are copied out of
# the cache so the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac \
    && cargo build --release --locked -p ckb-operator --target "$target" \
    && install -D -m 0755 "target/$target/release/ckb-operator" /rootfs/ckb-operator \
    && cargo cyclonedx --all --format json --spec-version 1.5 --target all --no-build-deps \
        --override-filename sbom \
    && install -D -m 0644 operator/sbom.json /rootfs/usr/share/doc/ckb-operator/sbom.cdx.json
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/home/nonroot \
    && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/rootfs/etc/passwd \
    && printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group \
    && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
    && chmod 1777 /rootfs/tmp \
    && chmod 0700 /rootfs/home/nonroot \
    && chown 65532:65532 /rootfs/home/nonroot

# --- runtime: nothing but those files ----------------------------------------------------------
FROM scratch
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
COPY --from=build /rootfs/ /
LABEL org.opencontainers.image.title="ckb-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/ckb-dev/ckb-operator" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.ckb.sbom="/usr/share/doc/ckb-operator/sbom.cdx.json"
USER 65532:65532
# Webhook (HTTPS) and metrics/probes (HTTP); the chart sets both ports.
EXPOSE 9443 8080
ENTRYPOINT ["/ckb-operator", "run"]
