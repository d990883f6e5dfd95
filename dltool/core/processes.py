"""Child processes: run one with its output relayed, and let it die with us.

`dltool tune` runs trials in child processes (`dltool.tuning.children`); the
user sees their output as if it were the parent's, Ctrl-C reaches both, and
a parent killed with SIGKILL takes the child with it (Linux), so nothing
keeps training behind the user's back.
"""

import codecs
import ctypes
import os
import signal
import subprocess
import sys
import threading

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child, before exec: SIGKILL it when the parent dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _relay(source, target):
    """Copies the bytes of `source` to the text stream `target` as they come."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in iter(lambda: os.read(source.fileno(), 65536), b""):
        target.write(decoder.decode(chunk))
        target.flush()
    target.write(decoder.decode(b"", final=True))
    target.flush()


def run_relayed(command):
    """Runs `command`, copying its stdout and stderr to ours; returns its exit code.

    Args:
        command: The argument list.

    Returns:
        The child's exit code (after Ctrl-C: once the child, which got the
        same Ctrl-C, has stopped).
    """
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # output as it comes
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=child_env, preexec_fn=preexec)
    relays = [threading.Thread(target=_relay, args=(process.stdout, sys.stdout), daemon=True),
              threading.Thread(target=_relay, args=(process.stderr, sys.stderr), daemon=True)]
    for relay in relays:
        relay.start()
    try:
        code = process.wait()
    except KeyboardInterrupt:
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    for relay in relays:
        relay.join(timeout=10)
    return code
