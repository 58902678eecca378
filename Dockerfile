# syntax=docker/dockerfile:1
#
# carbon-kube node agent image: one static binary on distroless/static
# (CA certificates, /etc/passwd with "nonroot" 65532, tzdata; no shell, no libc).
#
#   docker build -t ghcr.io/carbon-kube/carbon-kube:0.1.0 .
#
# The binary is built by deploy/build-static.sh, the same script CI runs
# outside Docker, so the flags cannot drift apart.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): Cargo.toml names targets under tests/
# and benches/, which cargo wants to find even for `--bin`.
COPY . .
# Registry and target dir are BuildKit caches, so rebuilds are incremental;
# the script copies the binary out of the cache to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    bash deploy/build-static.sh --out /out

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/carbon-kube /carbon-kube
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/carbon-kube", "agent"]
