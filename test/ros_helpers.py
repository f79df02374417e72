"""Helpers for tests that run ROS 2 processes talking over real DDS on this machine.

Each test gets its own ROS_DOMAIN_ID so parallel runs do not hear each other; processes are
started with a chosen Fast DDS profile (or explicitly none), their output is collected by a
reader thread so a test can wait for a readiness line without blocking, and they are stopped
with SIGINT first (so rclpy shuts down cleanly) and killed only if they do not exit.

    with RosProcess([sys.executable, "script.py"], ros_env(random_domain_id())) as proc:
        proc.wait_for("READY", timeout=20)
        ...
    print(proc.output)
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from sam_mmseg_ros.ros.dds import dds_environment

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def random_domain_id() -> int:
    """A domain in 100..199: away from the default 0 and inside the range UDP ports allow (< 233)."""
    return 100 + random.randrange(100)


def ros_env(domain_id: int, large_data_profile: bool = True, base: dict | None = None) -> dict:
    """Environment for a ROS process in `domain_id`, with the package's Fast DDS large-data
    profile or, when `large_data_profile` is False, with Fast DDS' built-in defaults (any
    profile the caller's environment names is removed so the comparison is fair)."""
    env = dict(os.environ if base is None else base)
    env.pop(PROFILE_VARIABLE, None)
    if large_data_profile:
        env = dds_environment(env)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RosProcess:
    """A subprocess whose merged stdout/stderr is collected line by line in the background."""

    def __init__(self, args: list[str], env: dict, cwd: str | Path | None = None):
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Block until a line matches `pattern` (regex); TimeoutError (with the output) otherwise."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty() and not self._reader.is_alive():
                    break
                continue
            if match := regex.search(line):
                return match
        raise TimeoutError(f"no line matching {pattern!r} within {timeout} s "
                           f"(exit code {self.proc.poll()}); output:\n{self.output}")

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; returns its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=2)
        return code

    def stop(self, timeout: float = 5.0) -> int:
        """SIGINT, then SIGKILL after `timeout` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        return self.proc.returncode

    def __enter__(self) -> RosProcess:
        return self

    def __exit__(self, *exc):
        self.stop()
