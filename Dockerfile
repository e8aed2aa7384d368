# syntax=docker/dockerfile:1.7
#
# One image per hardware class, holding every aifab binary (the services and the `aifab`
# operator CLI) under /usr/local/bin; docker-compose.yml picks the binary with `command:`.
#
#   docker build --target runtime      -t aifab/runtime:latest .       # CPU (default target)
#   docker build --target runtime-cuda -t aifab/runtime-cuda:latest .  # CUDA inference worker
#
# The workspace is compiled once per target with BuildKit cache mounts for the cargo
# registry and the target dir, so a rebuild after a code change only recompiles what
# changed. librdkafka is built from source by rdkafka-sys (cmake-build feature); its
# 2.12 sources include <curl/curl.h> even with curl disabled, hence libcurl4-openssl-dev.

# Binaries copied into the runtime images. A missing one fails the build, so a renamed
# crate cannot silently ship an image without its service (tests/tests/compose/ checks
# that every binary docker-compose.yml runs is in this list).
ARG AIFAB_BINS="aifab aifab-ingest aifab-feature aifab-trainer aifab-inference-worker aifab-monitor aifab-cost-accountant aifab-autoscaler"
ARG CUDA_VERSION=12.4.1

# ---------------------------------------------------------------------------------------
# builder: CPU build on Debian bookworm (same glibc as the runtime image).
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config zlib1g-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Extra cargo features, e.g. "aifab-inference-worker/cuda" (see builder-cuda).
ARG CARGO_FEATURES=""
ARG AIFAB_BINS
RUN --mount=type=cache,id=aifab-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=aifab-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=aifab-target-bookworm,target=/src/target,sharing=locked \
    set -eux; \
    locked=""; if [ -f Cargo.lock ]; then locked="--locked"; fi; \
    cargo build --release --workspace --bins $locked ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}; \
    mkdir -p /out; \
    for b in $AIFAB_BINS; do install -m 0755 "target/release/$b" /out/; done

# ---------------------------------------------------------------------------------------
# builder-cuda: the same workspace built against the CUDA toolkit (nvcc compiles candle's
# kernels). Ubuntu 22.04 to match runtime-cuda's glibc. The Rust toolchain is copied from
# the official image (rustup's binaries only need an old glibc).
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS builder-cuda
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:${PATH} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
COPY --from=rust:1-bookworm /usr/local/rustup /usr/local/rustup
COPY --from=rust:1-bookworm /usr/local/cargo /usr/local/cargo
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates cmake build-essential pkg-config zlib1g-dev libcurl4-openssl-dev git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Compute capability candle's kernels are compiled for (no GPU is visible while building).
# 80 = A100 and newer (PTX is JIT-compiled forward: runs on H100/H200 too); 90 = H100/H200.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
ARG CARGO_FEATURES="aifab-inference-worker/cuda"
ARG AIFAB_BINS
RUN --mount=type=cache,id=aifab-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=aifab-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=aifab-target-cuda,target=/src/target,sharing=locked \
    set -eux; \
    locked=""; if [ -f Cargo.lock ]; then locked="--locked"; fi; \
    cargo build --release --workspace --bins $locked ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}; \
    mkdir -p /out; \
    for b in $AIFAB_BINS; do install -m 0755 "target/release/$b" /out/; done

# ---------------------------------------------------------------------------------------
# runtime-cuda: CUDA runtime libraries (cudart, cuBLAS, ...) plus the CUDA build.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS runtime-cuda
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 aifab \
 && useradd --system --uid 10001 --gid aifab --home-dir /var/lib/aifab --create-home --shell /usr/sbin/nologin aifab \
 && mkdir -p /models /artifacts \
 && chown aifab:aifab /models /artifacts
COPY --from=builder-cuda /out/ /usr/local/bin/
ENV AIFAB_LOG_FORMAT=json \
    AIFAB_DEVICE=cuda:0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER aifab
WORKDIR /var/lib/aifab
EXPOSE 8083
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["aifab-inference-worker"]

# ---------------------------------------------------------------------------------------
# runtime: the default (last) target, CPU only. curl serves the compose healthchecks;
# tini forwards SIGTERM so services drain and commit before exiting.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 aifab \
 && useradd --system --uid 10001 --gid aifab --home-dir /var/lib/aifab --create-home --shell /usr/sbin/nologin aifab \
 && mkdir -p /models /artifacts \
 && chown aifab:aifab /models /artifacts
COPY --from=builder /out/ /usr/local/bin/
ENV AIFAB_LOG_FORMAT=json
USER aifab
WORKDIR /var/lib/aifab
EXPOSE 8080 8081 8082 8083 8084 8085 8086
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["aifab", "--help"]
