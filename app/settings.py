"""Runtime configuration: every knob is an ``FVSTEER_*`` environment variable (the README's "Configuration" table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.model.embedded import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "Settings"]


class Settings(BaseSettings):
    """One settings object, read once at start, passed down explicitly (no globals)."""

    model_config = SettingsConfigDict(env_prefix="FVSTEER_", extra="ignore")

    model: str = Field(
        DEFAULT_MODEL,
        description="HF model id, local directory, or .gguf file; the default is the embedded SmolLM2-135M-Instruct.",
    )
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 on CPU."
    )
    vectors_dir: Path = Field(Path("vectors"), description="Registry root; vectors live in <dir>/<model-slug>/.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "fvsteer", description="Where dequantized safetensors copies of models are kept."
    )
    redis_url: str | None = Field(None, description="Redis for head-mean caching (and, with FVSTEER_ROLE api/worker, "
                                  "the job queue and registry announcements); unset = in-process cache.")
    redis_ttl_s: int | None = Field(None, ge=1, description="Expiry of cached head means in Redis; unset = none.")
    jobs_dir: Path | None = Field(None, description="Where job records are kept; default <cache_dir>/jobs.")
    admin_token: str | None = Field(None, description="Bearer token of the admin routes; unset = admin routes 403.")
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    max_batch: int = Field(16, ge=1, le=512, description="Most rows decoded together in one batch.")
    max_queue: int = Field(256, ge=1, description="Most requests waiting for a batch slot.")
    max_new_tokens: int = Field(512, ge=1, description="Upper limit of a request's max_new_tokens.")
    max_prompt_tokens: int = Field(2048, ge=1, description="Upper limit of a prompt's length in tokens.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(16_000_000, ge=1024, description="Largest vector upload.")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request deadline for a completion.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection that has not sent a whole request head within this is closed.")
    body_timeout_s: float = Field(
        60.0, gt=0, description="A request body not whole within this after its head gets 408 (it is not work a "
        "shutdown drain waits for before then).")
    keep_alive_s: int = Field(5, ge=1, description="An idle keep-alive connection is closed after this (s).")
    queue_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for a batch slot; a request queued longer gets 504."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="After SIGTERM: how long in-flight requests may take to finish before the exit."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list); empty = no CORS headers at all."
    )
    playground: bool = Field(
        True, description="Serve the web playground at /playground (static files; it calls the public API only)."
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="Who serves completions: 'hf' (this process, transformers) or 'vllm' (a vLLM server with "
        "fvsteer's plugin; extraction, fine-tuning and the other science stay on the HF model in this process)."
    )
    vllm_url: str | None = Field(
        None, description="With backend vllm: a vLLM server you run (with FVSTEER_BANK_DIR set to this registry's "
        "model folder); unset = fvsteer starts and supervises one."
    )
    vllm_python: Path = Field(Path(".venv-vllm/bin/python"),
                              description="Python of vLLM's own environment (built by make serve-vllm).")
    vllm_port: int = Field(0, ge=0, le=65535, description="Port of the vLLM server fvsteer starts; 0 = any free one.")
    vllm_eager: bool = Field(False, description="Start vLLM with --enforce-eager (starts faster; decodes slower).")
    vllm_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM's --gpu-memory-utilization (on CPU: share of RAM for the KV cache; "
        "default 0.25 on CPU, vLLM's own on CUDA)."
    )
    vllm_args: list[str] = Field(default_factory=list, description="More vLLM arguments (JSON list).")
    vllm_start_timeout_s: float = Field(900.0, gt=0, description="How long vLLM may take to answer its health check.")
    bank_capacity: int = Field(128, ge=1, le=65536,
                               description="Vectors the vLLM bank holds (fixed for the life of the vLLM server).")
    max_vectors: int = Field(
        1000, ge=1, description="Most vectors the registry holds for the served model: a save, upload or job beyond "
        "gets 507. With FVSTEER_BACKEND=vllm also at most FVSTEER_BANK_CAPACITY less one row in eight, kept for "
        "vectors replaced or deleted while requests still use them.")
    job_retention_s: float = Field(
        7 * 86400.0, gt=0, description="A finished job's record is kept this long, then deleted.")
    max_job_records: int = Field(1000, ge=1, description="Most finished job records kept; the oldest go first.")
    role: Literal["all", "api", "worker"] = Field(
        "all", description="'all': one process serves and runs jobs (no Redis needed); 'api': serves HTTP and "
        "generation, jobs go to Redis; 'worker': runs extraction and fine-tuning jobs from Redis (HTTP: health and "
        "metrics only). 'api' and 'worker' need FVSTEER_REDIS_URL and a registry folder they all share."
    )
    job_heartbeat_s: float = Field(
        10.0, ge=1.0, description="A worker silent this long is dead: its running job goes to another worker."
    )
    registry_resync_s: float = Field(
        30.0, gt=0, description="With FVSTEER_REDIS_URL: how often each process rescans the shared registry folder "
        "for changes it was not told of on Redis (a safety net; it also rescans whenever it subscribes again)."
    )
    log_format: Literal["json", "text"] = Field("json", description="'json': one JSON object per log line.")
    hf_offline: bool = Field(True, description="Set HF_HUB_OFFLINE=1 so nothing is fetched from a hub.")
    log_level: str = Field("INFO", description="Python logging level.")


def vector_quota(settings: Settings) -> int:
    """How many vectors the registry may hold: ``max_vectors``, and with vLLM what its bank can serve."""
    if settings.backend != "vllm":
        return settings.max_vectors
    return max(1, min(settings.max_vectors, settings.bank_capacity - max(1, settings.bank_capacity // 8)))
