"""Remove what inference never reads from the installed torch (~190 MB of the image): the C++ headers (only
torch.compile's C++ code generation and extension builds read them; fvsteer compiles nothing), torch's own C++ test
binaries and protoc. Then check that torch still imports and computes."""

import shutil
import sys
from pathlib import Path

if sys.argv[1:] != ["--in-image"]:
    sys.exit("usage: python slim_torch.py --in-image (deletes files of the installed torch: for image builds only)")

import torch  # after the guard: nothing is touched by accident

root = Path(torch.__file__).parent
removed = 0
for folder in (root / "include", root / "test"):
    if folder.is_dir():
        removed += sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        shutil.rmtree(folder)
for path in (root / "bin").iterdir() if (root / "bin").is_dir() else ():
    if path.name.startswith(("test_", "protoc")) or path.name.endswith("Test"):
        removed += path.stat().st_size
        path.unlink()
assert float(torch.ones(2) @ torch.ones(2)) == 2.0
print(f"slim_torch: removed {removed / 1e6:.0f} MB from {root}")
