"""The steering state of this worker process, set by the loader and read by the batch processor (both run in the
worker that owns the model; vLLM builds the logits processors before it loads the model)."""

from __future__ import annotations

from fvsteer_vllm.state import SteeringState

STATE: SteeringState | None = None
