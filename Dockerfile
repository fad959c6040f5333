# loraplex on a GPU: `docker run --gpus all -p 8080:80 IMAGE` serves the built-in demo model.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/loraplex \
    PATH=/opt/loraplex/bin:$PATH \
    HF_HOME=/data/hf-cache

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/loraplex

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server server
COPY router router
COPY kernels kernels
COPY demo demo
COPY client client
COPY loadgen loadgen
# The default torch wheel on Linux x86_64 is a CUDA build, with triton; nvidia-ml-py feeds GPU metrics.
# Versions are pinned by pyproject.toml's ranges; the package itself comes from this folder.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]"

RUN useradd --create-home --uid 1001 loraplex && mkdir -p /data && chown 1001 /data
USER 1001
WORKDIR /home/loraplex

EXPOSE 80
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:80/health"]
ENTRYPOINT ["loraplex", "serve", "--host", "0.0.0.0", "--port", "80"]
