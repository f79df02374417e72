"""TensorRT engine cache (DESIGN.md §3): which engine file belongs to which ONNX model on which
GPU, and whether a file on disk may be loaded.

An engine is only valid for the exact ONNX graph, TensorRT version, GPU model (name, compute
capability, SM count and memory: every Jetson Orin module reports "Orin", sm 8.7, from the 8 GB
Nano to the 64 GB AGX) and precision it was built for; anything else either fails to deserialize or,
worse, runs a stale model. So every engine gets a sidecar `<engine>.json` holding its key and
the engine file's own sha256. A lookup loads an engine only when both match, a mismatch says
which fields differ, and a valid engine is found again after a restart without a rebuild.

Pure Python on purpose: TensorRT facts (version, GPU name, compute capability) are passed in,
so the whole policy is tested on machines without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SIDECAR_SUFFIX = ".json"
_CHUNK = 1 << 20


class EngineCacheError(RuntimeError):
    """An engine file cannot be used and building a new one is not allowed."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in chunks (ONNX files of large models are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """`$SAM_MMSEG_CACHE`, else `$XDG_CACHE_HOME/sam_mmseg_ros`, else `~/.cache/sam_mmseg_ros`."""
    if os.environ.get("SAM_MMSEG_CACHE"):
        return Path(os.environ["SAM_MMSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sam_mmseg_ros"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    sm_count: int | None = None  # None only in records written before it was part of the key
    total_memory_gib: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> EngineKey:
        return cls(
            onnx_sha256=str(data["onnx_sha256"]),
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=tuple(int(v) for v in data["compute_capability"]),
            precision=str(data["precision"]),
            sm_count=data.get("sm_count"),
            total_memory_gib=data.get("total_memory_gib"),
        )

    def digest(self) -> str:
        """Short stable hash of the key, used in default engine file names."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable 'field: stored -> wanted' lines for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{name}: {mine[name]} -> {theirs[name]}" for name in mine if mine[name] != theirs[name]]


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def default_engine_path(cache_dir: str | os.PathLike, onnx_path: str | os.PathLike, key: EngineKey) -> Path:
    """`<cache>/engines/<onnx stem>-<precision>-<gpu>-sm<cc>-trt<version>-<key digest>.engine`:
    readable for people, unique for the key."""
    major, minor = key.compute_capability
    name = (f"{Path(onnx_path).stem}-{key.precision}-{_slug(key.gpu_name)}-sm{major}{minor}"
            f"-trt{_slug(key.tensorrt_version)}-{key.digest()}.engine")
    return Path(cache_dir) / "engines" / name


def timing_cache_path(cache_dir: str | os.PathLike, key: EngineKey) -> Path:
    """Timing caches are only reusable on the same TensorRT version and GPU model (SM count
    included: tactic timings of a 16-SM Orin do not hold for an 8-SM one)."""
    major, minor = key.compute_capability
    return Path(cache_dir) / "timing" / (f"{_slug(key.gpu_name)}-sm{major}{minor}-{key.sm_count}sms"
                                         f"-trt{_slug(key.tensorrt_version)}.cache")


@dataclass(frozen=True)
class CacheCheck:
    """Outcome of checking an engine file against the wanted key."""

    valid: bool
    reason: str


def check_engine(engine_path: str | os.PathLike, key: EngineKey) -> CacheCheck:
    """Is `engine_path` a complete engine built for `key`? Never raises for a bad file: a
    missing, truncated, foreign or hand-copied engine is an ordinary reason to rebuild."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return CacheCheck(False, f"no engine at {engine_path}")
    meta_path = sidecar_path(engine_path)
    if not meta_path.is_file():
        return CacheCheck(False, f"{engine_path} has no cache record {meta_path.name} (built elsewhere?)")
    try:
        record = json.loads(meta_path.read_text())
        stored = EngineKey.from_dict(record["key"])
        engine_sha = str(record["engine_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CacheCheck(False, f"cache record {meta_path} is unreadable: {exc}")
    diffs = stored.differences(key)
    if diffs:
        return CacheCheck(False, f"{engine_path.name} was built for another setup: " + "; ".join(diffs))
    if file_sha256(engine_path) != engine_sha:
        return CacheCheck(False, f"{engine_path} does not match its recorded sha256 (corrupted or replaced)")
    return CacheCheck(True, f"{engine_path} matches {key.digest()}")


def check_user_engine(engine_path: str | os.PathLike, key_for: Callable[[EngineKey], EngineKey], *,
                      trusted: bool) -> CacheCheck:
    """May an engine a user named, with no ONNX file to rebuild it from, be loaded?

    With a cache record: only when the record matches `key_for(stored key)` (the caller fills in
    this machine's TensorRT and GPU and the wanted precision) and the file's recorded sha256.
    Without one: only when `trusted` says the user vouches for where the file came from, since
    TensorRT deserializes whatever it is given; the reason then says the checks were skipped.
    """
    engine_path = Path(engine_path)
    if not sidecar_path(engine_path).is_file():
        if not engine_path.is_file():
            return CacheCheck(False, f"no engine at {engine_path}")
        if trusted:
            return CacheCheck(True, f"{engine_path} has no cache record; loading it because it is marked trusted "
                                    "(engine_trusted): its hash, TensorRT version, GPU and precision are NOT checked")
        return CacheCheck(False, f"{engine_path} has no usable cache record ({sidecar_path(engine_path).name}); "
                                 "build it with `sam-mmseg build-engine --onnx <model.onnx>`, or, if you know where it "
                                 "comes from, mark it trusted (engine_trusted)")
    try:
        stored = EngineKey.from_dict(read_record(engine_path)["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CacheCheck(False, f"{engine_path} has no usable cache record ({exc}); build it with "
                                 "`sam-mmseg build-engine --onnx <model.onnx>`")
    return check_engine(engine_path, key_for(stored))


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash or a second process never leaves a
    half-written engine that looks valid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_engine(engine_path: str | os.PathLike, key: EngineKey, engine_bytes: bytes, **extra) -> Path:
    """Write the engine, then its cache record (the record last: an engine without a record is
    never trusted). `extra` (build settings, timings) is kept in the record for people."""
    engine_path = Path(engine_path)
    meta_path = sidecar_path(engine_path)
    meta_path.unlink(missing_ok=True)
    atomic_write(engine_path, bytes(engine_bytes))
    record = {"key": key.to_dict(), "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(), **extra}
    atomic_write(meta_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return engine_path


def read_record(engine_path: str | os.PathLike) -> dict:
    """The cache record of an engine (raises OSError/ValueError if it is missing or broken)."""
    return json.loads(sidecar_path(engine_path).read_text())


@dataclass(frozen=True)
class EnginePlan:
    """What to do with an engine path: `load` it as it is, or `build` it (and why)."""

    engine_path: Path
    action: str
    reason: str


def plan_engine(engine_path: str | os.PathLike, key: EngineKey, *, allow_build: bool) -> EnginePlan:
    """Load a valid engine, rebuild an invalid one, or fail clearly when building is disabled
    (a vehicle that must not spend minutes building at start-up)."""
    check = check_engine(engine_path, key)
    if check.valid:
        return EnginePlan(Path(engine_path), "load", check.reason)
    if not allow_build:
        raise EngineCacheError(
            f"cannot use the TensorRT engine: {check.reason}; building is disabled. "
            "Build it on this machine with `sam-mmseg build-engine --onnx <model.onnx>` "
            "or allow building.")
    return EnginePlan(Path(engine_path), "build", check.reason)
