# gand's training image: the same `gand train CONFIG` as on a laptop, for Kubernetes Jobs on spot GPU nodes.
#
#   docker build -t gand:0.1.0 .
#   docker run --gpus all -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY gand:0.1.0 train /etc/gand/config.yaml
#
# Base: PyTorch's official CUDA runtime image (torch 2.7.1, CUDA 12.8, cuDNN 9, Python 3.11), which satisfies
# gand's torch range, so pip installs no second torch.
# DeepSpeed ops: the one gand can use, CPUAdam (for memory.offload_optimizer), is compiled ahead of time in the
# matching -devel image and copied in; the runtime image has no CUDA compiler, so no op is JIT-built at run time.
# Every other dependency is pinned by deploy/docker/constraints.txt, generated from the environment the test
# suite passes in.

ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9
ARG DEEPSPEED_VERSION=0.19.8

FROM ${BASE}-devel AS deepspeed-ops
ARG DEEPSPEED_VERSION
# Build for the GPU generations spot fleets offer: T4 (7.5), A10/A10G/L4 (8.6, 8.9), A100 (8.0), H100 (9.0).
ENV TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0" DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1
COPY deploy/docker/constraints.txt /tmp/constraints.txt
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --constraint /tmp/constraints.txt \
        --wheel-dir /wheels "deepspeed==${DEEPSPEED_VERSION}"

FROM ${BASE}-runtime
LABEL org.opencontainers.image.title="gand" \
      org.opencontainers.image.description="Fault-tolerant GAN training for constrained hardware" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GAND_LOG_FORMAT=json

COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY --from=deepspeed-ops /wheels /tmp/wheels
COPY pyproject.toml README.md /opt/gand/src/
COPY gand /opt/gand/src/gand
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/wheels/*.whl "/opt/gand/src[deepspeed,gcs,k8s,tensorboard]" \
    && rm -rf /tmp/wheels /tmp/constraints.txt
COPY configs /opt/gand/configs

# A non-root user with a writable home: run directories, torch's caches.
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin gand
USER 1000:1000
WORKDIR /home/gand

# Exec form: gand is PID 1 and receives the SIGTERM of a drain or a spot notice itself, saves, and exits 75.
ENTRYPOINT ["gand"]
CMD ["--help"]
