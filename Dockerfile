# syntax=docker/dockerfile:1
# The tokenbudget-operator image: one static binary (musl, rustls + ring, no OpenSSL, time
# zones built in) on distroless/static, running as the non-root user 65532.
#
#   docker build -t registry.example.com/tokenbudget-operator:0.1.0 .
#
# The build targets the musl of the build machine's own architecture (x86_64 or aarch64):
# build on (or emulate) the architecture you deploy to. See docs/install.md.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# musl-gcc compiles ring's C and assembly parts for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && TARGET_CC=musl-gcc cargo build --release --locked --bin tokenbudget-operator --target "$target" \
 && cp "target/$target/release/tokenbudget-operator" /tokenbudget-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tokenbudget-operator /usr/local/bin/tokenbudget-operator
USER 65532:65532
# /healthz, /readyz and /metrics (--bind-address, default 0.0.0.0:8080).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tokenbudget-operator"]
