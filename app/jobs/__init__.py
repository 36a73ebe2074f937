"""Background jobs (extraction, fine-tuning, evaluation): states, progress, cancellation, persistence, in process or
through Redis workers."""
