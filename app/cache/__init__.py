"""Per-head mean activations, cached: Redis when configured, in-process otherwise (DESIGN.md §5)."""
