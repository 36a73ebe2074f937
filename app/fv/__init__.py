"""The science of function vectors: composites now; extraction and fine-tuning build on it (FV_METHOD.md)."""
