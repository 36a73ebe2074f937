"""fvsteer's vLLM plugin: function-vector steering inside vLLM, through its extension points only.

- ``--load-format fvsteer`` (:mod:`fvsteer_vllm.loader`): loads the model with vLLM's default loader, then wraps
  each decoder layer so that its output gets ``W_t @ B`` added in-graph, from fixed-address buffers.
- ``--logits-processors fvsteer_vllm.batch:SteeringBatch`` (:mod:`fvsteer_vllm.batch`): follows vLLM's persistent
  batch (added, removed, moved requests) and writes each steered request's weight row; it also validates a
  request's steering when vLLM admits it (HTTP 400 when it cannot be applied).

A request asks for steering with ``vllm_xargs: {"fvsteer": "<json>"}`` (:mod:`fvsteer_vllm.spec`). The bank is the
fvsteer registry folder named by ``FVSTEER_BANK_DIR`` (:mod:`fvsteer_vllm.bank`), re-read when it changes.
"""

from __future__ import annotations


def register() -> None:
    """``vllm.general_plugins`` entry point, run in every vLLM process: make ``--load-format fvsteer`` known."""
    from vllm.model_executor.model_loader import register_model_loader

    from fvsteer_vllm.loader import FvsteerModelLoader

    register_model_loader("fvsteer")(FvsteerModelLoader)
