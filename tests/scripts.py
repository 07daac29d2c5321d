"""Running the project's scripts as a user would, for the end-to-end tests: a subprocess
in the repository root, on the CPU with one thread, its output captured."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args, check=True, timeout=240, launcher=(sys.executable,)):
    """args: the script and its arguments; launcher: what runs it (python, or torchrun)."""
    env = dict(os.environ, VPWM_DEVICE="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc
