"""The model worker: the one owner of the model (loading, adapter, steering, batched generation)."""
