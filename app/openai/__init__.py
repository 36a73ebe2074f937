"""The OpenAI-compatible surface: wire format, model ids, serving."""
