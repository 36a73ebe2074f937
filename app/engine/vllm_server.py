"""A vLLM server that fvsteer starts and supervises (``FVSTEER_BACKEND=vllm`` without ``FVSTEER_VLLM_URL``).

It runs in vLLM's own environment (``FVSTEER_VLLM_PYTHON``, made by ``make serve-vllm``: vLLM pins its own torch
and transformers) with fvsteer's plugin: ``--load-format fvsteer`` and the ``SteeringBatch`` logits processor, its
bank the registry folder of the served model, prefix caching on (steered rows are salted). On CUDA it uses
piecewise CUDA graphs: the plugin fills its buffers in the Python part of each forward, which full-graph replay
would skip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VllmLaunch:
    python: Path
    model: str  # what vLLM loads: the HF directory (or hub id) the science model came from
    served_name: str
    bank_dir: Path
    bank_capacity: int
    max_num_seqs: int
    max_model_len: int
    dtype: torch.dtype
    device: torch.device
    log_path: Path
    memory_utilization: float | None = None
    eager: bool = False
    port: int = 0
    stop_grace_s: float = 30.0  # SIGTERM to SIGKILL, for vLLM's whole process tree
    extra_args: list[str] = field(default_factory=list)

    def command(self, port: int) -> list[str]:
        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[self.dtype]
        args = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
            "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(port),
            "--load-format", "fvsteer", "--logits-processors", "fvsteer_vllm.batch:SteeringBatch",
            "--enable-prefix-caching", "--max-num-seqs", str(self.max_num_seqs),
            "--max-model-len", str(self.max_model_len), "--dtype", dtype,
        ]
        memory = self.memory_utilization
        if memory is None and self.device.type == "cpu":
            memory = 0.25  # on CPU this is the share of RAM vLLM reserves for its KV cache
        if memory is not None:
            args += ["--gpu-memory-utilization", str(memory)]
        if self.eager:
            args.append("--enforce-eager")
        elif self.device.type == "cuda":
            args += ["--compilation-config", '{"cudagraph_mode": "PIECEWISE"}']
        return args + self.extra_args


class ManagedVllm:
    def __init__(self, launch: VllmLaunch) -> None:
        self.launch = launch
        self.port = launch.port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not self.launch.python.exists():
            raise RuntimeError(f"no vLLM environment at {self.launch.python}: run `make serve-vllm` (it builds "
                               "one) or set FVSTEER_VLLM_PYTHON, or FVSTEER_VLLM_URL for a vLLM you run yourself")
        env = {**os.environ, "FVSTEER_BANK_DIR": str(self.launch.bank_dir),
               "FVSTEER_BANK_CAPACITY": str(self.launch.bank_capacity)}
        if self.launch.device.type == "cpu" and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            # vLLM's CPU worker otherwise keeps one core for its front processes and computes on the rest: on a
            # 2-core machine that halves its speed (measured: 16 clients, 228 → 313 tokens/s with both cores).
            cores = sorted(os.sched_getaffinity(0))
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.launch.command(self.port)
        log.info("starting vLLM on port %d (log %s): %s", self.port, self.launch.log_path, " ".join(command))
        # Under the supervisor, vLLM's process tree (API server, engine core, workers) ends when vLLM's API server
        # exits, when stop() asks, and when this process dies however it dies (app/engine/supervisor.py).
        supervised = [sys.executable, "-m", "app.engine.supervisor", str(self.launch.stop_grace_s), "--", *command]
        with self.launch.log_path.open("ab") as out:
            self.process = subprocess.Popen(supervised, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Asks the supervisor to end vLLM's tree (SIGTERM, SIGKILL after the grace); SIGKILLs the whole group if
        the supervisor does not end in time, or ended without doing so (it was killed itself)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=self.launch.stop_grace_s + 10)
            except subprocess.TimeoutExpired:
                pass
        # The group outlives its leader while any member lives, so its id cannot have been reused: whatever is left
        # of vLLM's tree is still in it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
