# heygem GPU image: web app + HTTP job API on port 8080, ready for `docker run --gpus all` and for
# a Huawei ModelArts custom-image service. See README.md ("Docker") and docs/deployment-modelarts.md.
#
#   docker build -t heygem .
#   docker build -t heygem:offline --build-arg BAKE_WEIGHTS=1 .     # weights inside the image
#
# Base: the CUDA 12.6 *base* image on Ubuntu 24.04. Ubuntu 24.04 ships Python 3.12, which the
# pinned requirements accept (numpy, scipy and fastapi need >= 3.11, so 22.04's 3.10 is too old)
# without a third-party PPA. The torch wheel brings its own CUDA runtime, cuBLAS and cuDNN, so the
# `-runtime-` flavour would only add a second copy of them: `-base-` gives the environment the
# NVIDIA container toolkit expects, and nothing more.
#
# Why 12.6: torch 2.13 publishes CUDA 12.6 and 13.0 wheels (13.2 experimental), none for 12.8.
# The cu126 wheel keeps kernels for Maxwell to Hopper (sm_50 to sm_90, so P100, V100, T4, A10,
# A100, L4, H100) and runs on any driver >= 525 (CUDA 12 minor-version compatibility), which is
# the README's promise. Blackwell needs the cu130 wheel and a >= 580 driver: build with
# `--build-arg CUDA_BASE=nvidia/cuda:13.0.2-base-ubuntu24.04 --build-arg
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130` (heygem checks the GPU against the
# wheel's architectures at start-up and falls back to the CPU with one line if they do not match).
ARG CUDA_BASE=nvidia/cuda:12.6.3-base-ubuntu24.04
FROM ${CUDA_BASE}

# The PyTorch wheel index must match the CUDA major version of the base (cu126 or cu130).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# Same version as requirements.txt (a test checks that they agree).
ARG TORCH_VERSION=2.13.0
# 1 = download the weights at build time (offline hosts; check the licence before shipping).
ARG BAKE_WEIGHTS=0
# Hugging Face endpoint used when BAKE_WEIGHTS=1; set a mirror here if huggingface.co is blocked.
ARG HF_ENDPOINT=https://huggingface.co

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# apt versions are not pinned (DL3008): they follow the base's Ubuntu release, whose archive drops
# old patch versions, so exact pins would break rebuilds without making them reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates ffmpeg python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# ModelArts starts the container as ma-user (uid 1000) in ma-group (gid 100). Ubuntu 24.04
# already has user "ubuntu" on uid 1000 and group "users" on gid 100: free the uid, rename the group.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && if getent group 100 >/dev/null; then \
        groupmod --new-name ma-group "$(getent group 100 | cut -d: -f1)"; \
    else \
        groupadd --gid 100 ma-group; \
    fi \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ma-user --shell /bin/bash ma-user

# The virtual environment stays root-owned: nothing writes to it at run time.
ENV VIRTUAL_ENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY requirements.txt ./
# face-alignment goes in without its dependency list, which would pull the GUI opencv-python over
# the headless build; its real dependencies are in requirements.txt (as scripts/setup.sh does).
RUN pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps face-alignment==1.5.0

# The base image's NVIDIA_REQUIRE_CUDA asks for a driver that reports CUDA >= 12.6 (>= 560) and
# only lets a few older branches through by brand, so Docker would refuse drivers 525-555 that the
# wheel runs on. The promise is "driver >= 525", which is what "cuda>=12.0" checks.
ENV NVIDIA_REQUIRE_CUDA="cuda>=12.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    HOME=/home/ma-user \
    HEYGEM_HOST=0.0.0.0 \
    HEYGEM_COMPAT_HOST=0.0.0.0 \
    HEYGEM_PORT=8080 \
    HEYGEM_LOG_LEVEL=INFO \
    HEYGEM_DATA_DIR=/home/ma-user/data \
    GRADIO_TEMP_DIR=/home/ma-user/.cache/gradio \
    HF_HOME=/home/ma-user/.cache/huggingface \
    TORCH_HOME=/home/ma-user/.cache/torch \
    NUMBA_CACHE_DIR=/home/ma-user/.cache/numba \
    MPLCONFIGDIR=/home/ma-user/.cache/matplotlib

# Every path the app writes belongs to ma-user: the data folder (inputs, outputs, cache, job
# database, and models/ unless HEYGEM_MODELS_DIR points elsewhere), the caches and /app (its files
# arrive owned by ma-user through COPY --chown; a recursive chown would copy them into a new layer).
# No models/ folder is created: without one, Settings falls back to /home/mind/model, where
# ModelArts places a model package.
COPY --chown=1000:100 . /app
RUN mkdir -p "$HEYGEM_DATA_DIR" "$GRADIO_TEMP_DIR" "$HF_HOME" "$TORCH_HOME" "$NUMBA_CACHE_DIR" \
        "$MPLCONFIGDIR" \
    && chown 1000:100 /app \
    && chown -R 1000:100 /home/ma-user

# ma-user:ma-group, numerically, so that a "run as non-root" policy can verify it without /etc/passwd.
USER 1000:100

RUN if [ "$BAKE_WEIGHTS" = "1" ]; then python -m heygem models download; fi

EXPOSE 8080

# /health answers as soon as the server accepts requests (jobs queue while the model loads); the
# start period covers imports and the server start on a cold node.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEYGEM_PORT', '8080'), timeout=5)"]

# start_app.sh ends with `exec`, so the server receives SIGTERM directly and drains its queue.
CMD ["bash", "start_app.sh"]
