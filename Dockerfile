# crossrank with the CUDA backend, in two stages:
#   build: the pinned nvcc (scripts/install-nvcc.sh, CUDA 13.0 wheels from PyPI) compiles the
#          kernels into the fatbin that build.rs embeds; cargo builds the release binary;
#   run:   NVIDIA's CUDA runtime image (libcudart, cuBLAS/cuBLASLt; libcuda comes from the host
#          driver through the NVIDIA container toolkit) with the binary alone.
#
#   docker build -t crossrank:0.1.0 .
#   docker run --gpus all -p 8080:8080 -v /models:/models:ro crossrank:0.1.0 \
#       serve --model reranker=/models/bge-reranker-v2-m3 --device cuda --host 0.0.0.0
#
# Not built in CI (no Docker daemon there); deploy/kubernetes/ is validated by
# scripts/check-deploy.sh, which also checks this file's stages against the repository.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The wheels go into /src/.nvcc with pip --target; Debian marks its Python as externally
# managed, which does not concern a --target install.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)" \
    && NVCC="$NVCC" cargo build --release --locked --features cuda --bin crossrank \
    && cp target/release/crossrank /crossrank

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS run
COPY --from=build /crossrank /usr/local/bin/crossrank
RUN useradd --system --uid 10001 crossrank
USER 10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/crossrank"]
CMD ["serve", "--help"]
