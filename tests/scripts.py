"""Running the project's scripts as a user would, for the end-to-end tests: a subprocess
in the repository root, on the CPU with one thread, its output captured; and killing one
with SIGKILL in the middle of its work, as a crash or an out-of-memory kill would."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, VPWM_DEVICE="cpu", OMP_NUM_THREADS="1")


def run(args, check=True, timeout=240, launcher=(sys.executable,)):
    """args: the script and its arguments; launcher: what runs it (python, or torchrun)."""
    proc = subprocess.run([*launcher, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def kill_when(args, ready, timeout=240, poll_s=0.01, launcher=(sys.executable,)) -> str:
    """Start `args` like run(), SIGKILL it (no clean-up of any kind runs) as soon as
    ready() is true, and return its output. Fails when the process ends before that."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([*launcher, *args], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(poll_s)
            else:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        out = log.read()
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"{args} ended with {proc.returncode} before it could be killed:\n{out[-3000:]}")
    return out


def checkpoint_where(path, test):
    """A ready() for kill_when: true once the checkpoint at `path` exists and test(ckpt) holds
    (the file is read again only when it changes; writes are atomic renames)."""
    import torch

    seen = {}

    def ready():
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns)   # every save is a new file renamed into place
        except FileNotFoundError:
            return False
        if seen.get("stamp") != stamp:
            seen["stamp"] = stamp
            seen["ok"] = bool(test(torch.load(path, weights_only=True)))
        return seen["ok"]
    return ready
