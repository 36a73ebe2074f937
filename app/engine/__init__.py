"""Generation backends: the hf engine (the one thread that runs the model: admission, batched decoding, the steering
bank) and the vLLM backend (a client of a supervised vLLM server with fvsteer's plugin)."""
