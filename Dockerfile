# syntax=docker/dockerfile:1
#
# carbon-kube node agent image: one static binary on distroless/static
# (CA certificates, /etc/passwd with "nonroot" 65532, tzdata; no shell, no libc).
#
#   docker build -t ghcr.io/carbon-kube/carbon-kube:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/carbon-kube/carbon-kube:0.1.0 .
#
# The binary is built by deploy/build-static.sh, the same script CI and the
# release workflow run outside Docker, so the flags cannot drift apart. The
# builder runs on the build machine's own platform and cross-compiles for each
# target platform (TARGETARCH), so a multi-arch build needs no emulation: the
# final stage only copies files.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH
WORKDIR /src
# The whole context (see .dockerignore): Cargo.toml names targets under tests/
# and benches/, which cargo wants to find even for `--bin`.
COPY . .
# Registry and target dir are BuildKit caches, so rebuilds are incremental;
# the script copies the binary out of the cache to /out. cross-deps.sh adds the
# cross gcc and Rust target when TARGETARCH is not the builder's own.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    bash deploy/cross-deps.sh "$TARGETARCH" && \
    bash deploy/build-static.sh --arch "$TARGETARCH" --out /out

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/carbon-kube /carbon-kube
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/carbon-kube", "agent"]
