# syntax=docker/dockerfile:1
# The tokenbudget-operator image: one static binary (musl, rustls + ring, no OpenSSL, time
# zones built in) on distroless/static, running as the non-root user 65532.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%FT%TZ) \
#     -t registry.example.com/tokenbudget-operator:0.1.0 --push .
#
# The build stage runs on the build machine's own platform ($BUILDPLATFORM) and
# cross-compiles for each target platform: cargo-zigbuild with zig as the C compiler and
# linker (ring has C and assembly parts), both from PyPI, for x86_64 or aarch64 musl. No
# emulation, whichever the builder's architecture. The `dist` profile of Cargo.toml is release
# with whole-program LTO, one codegen unit and no symbols. See docs/install.md.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG ZIG_VERSION=0.17.0
ARG CARGO_ZIGBUILD_VERSION=0.24.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && pip3 install --no-cache-dir --break-system-packages \
      "ziglang==${ZIG_VERSION}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}"
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# Set by BuildKit from --platform (the target's architecture: amd64, arm64).
ARG TARGETARCH
# The commit, and the compiler's version, go into the binary's tokenbudget_build_info metric
# (read at compile time: src/metrics.rs, BUILD_INFO).
ARG REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture: $TARGETARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
 && TOKENBUDGET_GIT_COMMIT="$REVISION" TOKENBUDGET_RUSTC_VERSION="$(rustc --version | cut -d' ' -f2)" \
    cargo zigbuild --profile dist --locked --bin tokenbudget-operator --target "$target" \
 && cp "target/$target/dist/tokenbudget-operator" /tokenbudget-operator

FROM gcr.io/distroless/static-debian12:nonroot
# The OCI annotations of the image (docker inspect, registries' UIs). VERSION is the
# operator's (Cargo.toml, the chart's appVersion); pass REVISION and CREATED when building.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="tokenbudget-operator" \
      org.opencontainers.image.description="Caps the LLM tokens (and money) that Kubernetes workloads spend" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/tokenbudget/tokenbudget-operator" \
      org.opencontainers.image.documentation="https://github.com/tokenbudget/tokenbudget-operator/blob/main/docs/install.md"
COPY --from=build /tokenbudget-operator /usr/local/bin/tokenbudget-operator
USER 65532:65532
# /healthz, /readyz and /metrics (--bind-address, default 0.0.0.0:8080), and the agent API
# (--agent-api-bind-address, default 0.0.0.0:8082).
EXPOSE 8080 8082
ENTRYPOINT ["/usr/local/bin/tokenbudget-operator"]
