"""Function vectors on disk: safetensors files with fvsteer metadata, one folder per model."""
