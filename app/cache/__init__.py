"""Per-head mean activations, cached: Redis when configured, in-process otherwise.

The key and layout are in docs/architecture.md, "Head-mean cache"."""
