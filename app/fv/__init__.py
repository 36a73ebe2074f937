"""The science of function vectors (Todd et al. 2024; Kang, Wu & Lu 2026): prompts, head means, mediation,
extraction, fine-tuning and evaluation."""
