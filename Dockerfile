# syntax=docker/dockerfile:1
# The `flotilla` image: one static-ish binary on distroless, non-root. Build from the repo root:
#   docker build -t flotilla:0.1.0 .
# Every role runs from it: `serve` (default), `serve --roles gateway`, `serve --roles coordinator`,
# `ctl`, `certs`. Ports: 4320 OpAMP (agents; TLS ends here), 4321 API, console, /metrics, probes.

# Kept equal to rust-toolchain.toml's channel (scripts/check_deploy.sh checks it), so the image
# builds with the compiler CI tests with and rustup downloads nothing.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
# Overrides rust-toolchain.toml, whose clippy/rustfmt components a release build does not need
# (the image's minimal profile lacks them; rustup would otherwise fetch them on every cold build).
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# The same release build as scripts/bench.sh and scripts/cluster.sh (profile.release in
# Cargo.toml); --locked: exactly Cargo.lock's versions. The cache mounts only speed up rebuilds;
# the binary is copied out of the cached target dir within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flotilla --bin flotilla \
 && install -D -m 0755 target/release/flotilla /out/flotilla \
 && install -d -m 0750 /out/var/lib/flotilla

# distroless/cc: glibc, libgcc, CA roots (rediss://, https OTLP and alert sinks), tzdata; no shell.
# Pin by digest for releases: gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/flotilla /flotilla
# The embedded store's directory (standalone mode), owned by the runtime user so a fresh
# `docker run -v flotilla-data:/var/lib/flotilla` volume is writable. Clustered roles never write.
COPY --from=build --chown=65532:65532 /out/var/lib/flotilla /var/lib/flotilla
ENV FLOTILLA_DATA_DIR=/var/lib/flotilla
USER 65532:65532
EXPOSE 4320 4321
# Kubernetes probes /healthz and /readyz on 4321 instead; the image has no shell or curl to run
# a HEALTHCHECK with.
#checkov:skip=CKV_DOCKER_2:probes are HTTP /healthz and /readyz on port 4321 (Kubernetes httpGet); distroless has no client to run a HEALTHCHECK
ENTRYPOINT ["/flotilla"]
CMD ["serve"]
