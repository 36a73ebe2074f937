"""The loaded HF model as both seams use it: its layout (adapter), loading, the steering hook, and the runner that
decides on which thread a science forward runs. Imports nothing of ``app.engine`` or ``app.fv``."""
