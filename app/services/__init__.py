"""What the HTTP layer calls: completions, vectors (jobs, evaluation, decoding), analogies. Plain typed inputs in,
pydantic results out; no HTTP here."""
