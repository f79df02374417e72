"""Seeded, time-bounded fuzzing of the bag reader (with the node's decoders) and the checkpoint
loader (test/fuzz_files.py): only the package's own errors, no hang, bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).with_name("fuzz_files.py")


def test_mutated_bags_and_checkpoints_fail_only_with_the_packages_errors(tmp_path):
    # 1.5 s a target in CI; `python test/fuzz_files.py DIR --seconds 600` hunts longer. The child
    # runs under an address-space limit (768 MiB above its set-up) and a per-mutant alarm; the
    # timeout here catches a hang inside C code the alarm cannot interrupt.
    done = subprocess.run([sys.executable, str(FUZZER), str(tmp_path), "--seconds", "1.5", "--seed", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if " mutants in " in line]
    assert [line.split(":")[0] for line in lines] == ["seed-mcap", "seed-mcap-zstd", "seed-sqlite3", "checkpoint"]
    assert all(int(line.split(": ")[1].split()[0]) >= 10 for line in lines), lines  # it did fuzz
    assert "peak RSS" in done.stdout
