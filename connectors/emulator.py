"""Google's Pub/Sub emulator as a child process (the Cloud SDK's `pubsub-emulator` component).

Shared by the test fixtures (tests/fixtures/pubsub.py) and the live benchmark (bench/live.py):

    command, why = find_emulator()          # None and the reason where it is not installed
    process = EmulatorProcess(command, free_port())
    process.start()                         # waits until it answers; EmulatorError if it does not
    os.environ["PUBSUB_EMULATOR_HOST"] = process.host
    ...
    process.stop(signal.SIGTERM)            # its whole process group (the launcher and the JVM)

or `with running_emulator() as process: ...` (EmulatorNotFound where none is installed).
The emulator runs in a session of its own, so a Ctrl-C in the terminal does not reach it
before its owner has stopped what depends on it; `stop()` ends the whole group. Nothing here
imports pytest: the fixtures turn EmulatorNotFound into a skip and EmulatorError into a failure.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Iterator


class EmulatorNotFound(RuntimeError):
    """The emulator cannot be started here (no Java, or no Cloud SDK component); the message says which."""


class EmulatorError(RuntimeError):
    """The emulator exited or did not answer; the message names its log."""


def find_emulator() -> tuple[list[str] | None, str]:
    """The command that starts the emulator, or None and why not."""
    if shutil.which("java") is None:
        return None, "java is not installed (the Pub/Sub emulator needs it)"
    roots = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(gcloud))))
    roots += ["/usr/lib/google-cloud-sdk", "/google-cloud-sdk", "/opt/google-cloud-sdk"]
    for root in roots:
        binary = os.path.join(root, "platform", "pubsub-emulator", "bin", "cloud-pubsub-emulator")
        if os.access(binary, os.X_OK):
            return [binary], ""
    return None, "the Cloud SDK pubsub-emulator component is not installed"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(host: str, timeout_s: float = 1.0) -> bool:
    """True when the emulator at host ("127.0.0.1:PORT") answers its HTTP root with 200."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


def wait_until_answers(proc: subprocess.Popen, host: str, timeout_s: float, log_path: str) -> None:
    """Block until the emulator process `proc` answers on `host`.

    Raises EmulatorError when it exits first or does not answer within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise EmulatorError(f"the Pub/Sub emulator exited with {proc.returncode}; see {log_path}")
        if answers(host):
            return
        if time.monotonic() > deadline:
            raise EmulatorError(f"the Pub/Sub emulator did not answer on {host} in {timeout_s:.0f} s; "
                                f"see {log_path}")
        time.sleep(0.25)


class EmulatorProcess:
    """One emulator process on a fixed loopback port, which can be stopped and started again
    (on the same port; like Google's emulator after any restart, it has then forgotten every
    topic, subscription and message)."""

    def __init__(self, command: list[str], port: int, log_path: str | None = None):
        self.command = command
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.log_path = log_path or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pubsub-emulator-{port}.log")
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 90) -> None:
        """Start it and wait until it answers (EmulatorError if it exits or does not answer)."""
        assert self.proc is None, "the emulator is already running"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command + ["--host=127.0.0.1", f"--port={self.port}"], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_answers(self.proc, self.host, timeout_s, self.log_path)
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """End the emulator's process group (SIGKILL by default: an abrupt outage; SIGKILL
        after 15 s where `sig` does not end it)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def running_emulator(timeout_s: float = 90, log_path: str | None = None) -> Iterator[EmulatorProcess]:
    """A started emulator on a free loopback port, stopped (its process group, SIGTERM) at the
    end, also on an exception or Ctrl-C. Raises EmulatorNotFound where none is installed."""
    command, why = find_emulator()
    if command is None:
        raise EmulatorNotFound(why)
    process = EmulatorProcess(command, free_port(), log_path)
    try:
        process.start(timeout_s)
        yield process
    finally:
        process.stop(signal.SIGTERM)
