"""Background jobs (extraction now, fine-tuning next): states, progress, cancellation, persistence."""
