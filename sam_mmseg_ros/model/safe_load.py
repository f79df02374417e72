"""Reading weights from outside: `torch.load(weights_only=True)` behind bounded archive sizes, and
strict loading that names every missing, unexpected or misshapen tensor.

Shared by our checkpoints (`checkpoint.py`) and official SAM/SAM2 files (`sam2_weights.py`).
Every failure is a `CheckpointError` naming the file; a refusal never suggests the unsafe way.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from sam_mmseg_ros.contracts import BadFileError

_LISTED = 5  # keys named per category in an error message
MAX_CHECKPOINT_BYTES = 4 << 30
"""Largest archive content read: official ViT-H SAM is 2.56 GB, ours with it adds experts, heads
and optimizer state for them. Bigger declared sizes are refused before torch allocates them."""


class CheckpointError(BadFileError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def read_untrusted(path_or_state, map_location) -> dict:
    if isinstance(path_or_state, dict):
        return path_or_state
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_archive(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # `from None`: torch's own message advises re-running with weights_only=False.
        raise CheckpointError(
            f"{path} was refused: it holds pickled code or objects, not only tensors and plain data "
            f"({_refusal_detail(exc)}). Nothing in it was run. sam_mmseg_ros checkpoints and official SAM "
            "files hold only tensors and plain data, so this file is neither or was altered: do not load it "
            "any other way.") from None
    except Exception as exc:  # noqa: BLE001 - torch's parser of hostile bytes raises anything
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or damaged): "
                              f"{type(exc).__name__}: {_safe_text(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a dict of weights")
    return data


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive: its declared sizes bound what loading allocates, so they
    are checked before torch reads a byte of it."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception as exc:  # noqa: BLE001 - zipfile on outside bytes: BadZipFile, NotImplementedError...
        raise CheckpointError(f"{path} is not a torch checkpoint archive (truncated, damaged, or written by "
                              f"torch older than 1.6): {type(exc).__name__}: {str(exc)[:200]}") from None
    if declared > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path} declares {declared / 2**30:.1f} GiB of content, more than the "
                              f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB any supported model needs")


def _refusal_detail(exc: Exception) -> str:
    """What torch's weights-only unpickler refused (e.g. 'unsupported GLOBAL posix.system'),
    without its advice to load the file unsafely."""
    kept = [p.strip() for p in str(exc).split("\n\n") if p.strip() and "weights_only" not in p
            and not p.strip().startswith(("Weights only load failed", "Check the documentation"))]
    return "; ".join(kept)[:300] or "unsupported pickle content"


def _safe_text(exc: Exception) -> str:
    text = str(exc)
    return _refusal_detail(exc) if "weights_only" in text else text[:300]


def describe_keys(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")
    return f"{len(keys)} {what} ({shown})"


def require_tensors(state: Mapping, source: str) -> None:
    not_tensors = sorted(str(k)[:80] for k, v in state.items() if not isinstance(v, torch.Tensor)
                         or v.layout != torch.strided or v.is_quantized)
    if not_tensors:
        raise CheckpointError(f"{source}: {describe_keys('entries that are not dense tensors', not_tensors)}")


def load_strict(module: nn.Module, state: Mapping, source: str,
                 may_be_missing: Callable[[str], bool] = lambda key: False) -> None:
    """Load `state` into `module`: every key of the module (but those `may_be_missing`) must be
    present as a dense tensor of the same shape and kind (float or not), and no unknown key may
    appear."""
    require_tensors(state, source)
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not may_be_missing(k))
    unexpected = sorted(str(k)[:80] for k in state if k not in own)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
    retyped = sorted(f"{k} {state[k].dtype} vs {own[k].dtype}" for k in state if k in own
                     and state[k].dtype != own[k].dtype
                     and not (state[k].is_floating_point() and own[k].is_floating_point()))
    problems = [describe_keys(what, keys) for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("with another shape", mismatched),
                 ("with another type", retyped)) if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)
