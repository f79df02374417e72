"""Checkpoints from outside: hostile pickles are refused on every route that loads one, absurd
configs are refused before anything is allocated, and every failure is a CheckpointError that
names the file and the problem and never suggests loading it unsafely."""

from __future__ import annotations

import builtins
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sam_mmseg_ros.cli import EXIT_BAD_FILE
from sam_mmseg_ros.cli import main as cli_main
from sam_mmseg_ros.engine import create_backend
from sam_mmseg_ros.model import build_model, safe_load
from sam_mmseg_ros.model.checkpoint import CheckpointError, load_checkpoint, load_sam_weights, save_checkpoint
from sam_mmseg_ros.model.config import CONFIG_LIMITS, MODEL_CONFIGS

torch.set_num_threads(1)

MICRO = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
             aux_block_indexes=(0, 1), out_chans=32, decoder_heads=2, decoder_mlp_dim=64, lora_rank=2,
             num_classes=5)


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "micro.pt", build_model("tiny", **MICRO))


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# --------------------------------------------------------------------------- hostile pickles


class _Reduce:
    """Pickles as a call of `func(*args)`: what a hostile checkpoint uses to run code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(kind: str, sentinel: Path, good: Path) -> Path:
    """A checkpoint that would create `sentinel` if anything in it ran."""
    path = sentinel.with_suffix(".pt")
    touch = f"touch {sentinel}"
    payload = _payload(good)
    if kind == "os.system in the weights":
        payload["state_dict"]["decoder.class_tokens.weight"] = _Reduce(os.system, touch)
    elif kind == "exec as the whole file":
        payload = _Reduce(builtins.exec, f"open({str(sentinel)!r}, 'w').close()")
    elif kind == "subprocess in the config":
        payload["config"]["name"] = _Reduce(subprocess.call, ["touch", str(sentinel)])
    elif kind == "eval in the extras":
        payload["optimizer"] = {"state": _Reduce(builtins.eval, f"open({str(sentinel)!r}, 'w').close()")}
    elif kind == "legacy raw pickle":  # not a torch zip archive at all
        path.write_bytes(pickle.dumps(_Reduce(os.system, touch)))
        return path
    else:
        raise AssertionError(kind)
    torch.save(payload, path)
    return path


KINDS = ("os.system in the weights", "exec as the whole file", "subprocess in the config", "eval in the extras",
         "legacy raw pickle")


def _route_node(path: Path, tmp: Path) -> str:
    """What the node does with its `checkpoint` parameter (backend auto, as by default)."""
    with pytest.raises(CheckpointError) as error:
        create_backend("auto", checkpoint=path, device="cpu", cache_dir=tmp / "cache")
    return str(error.value)


def _route_cli(*argv: str):
    def route(path: Path, tmp: Path, caplog) -> str:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert cli_main([a.format(path=path, tmp=tmp) for a in argv]) == EXIT_BAD_FILE
        return caplog.text

    return route


TRAIN = ("train", "--dataset", "synthetic", "--train-frames", "1", "--val-frames", "0", "--model", "tiny",
         "--img-size", "64", "--steps", "1", "--device", "cpu", "--num-workers", "0", "--out", "{tmp}/train",
         "--no-progress")
ROUTES = {
    "node": lambda path, tmp, caplog: _route_node(path, tmp),
    "eval": _route_cli("eval", "{tmp}", "--checkpoint", "{path}", "--out", "{tmp}/eval", "--no-progress"),
    "export": _route_cli("export", "--checkpoint", "{path}", "-o", "{tmp}/model.onnx"),
    "train --resume": _route_cli(*TRAIN, "--resume", "{path}"),
    "train --init-checkpoint": _route_cli(*TRAIN, "--init-checkpoint", "{path}"),
    "train --sam-checkpoint": _route_cli(*TRAIN, "--sam-checkpoint", "{path}"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", KINDS)
def test_hostile_pickles_are_refused_on_every_route(kind, route, micro_checkpoint, tmp_path, caplog):
    sentinel = tmp_path / "pwned"
    path = _hostile(kind, sentinel, micro_checkpoint)
    message = ROUTES[route](path, tmp_path, caplog)
    assert not sentinel.exists(), "code in the checkpoint ran"
    assert str(path) in message
    assert "weights_only" not in message and "trusted source" not in message


def test_refusal_names_what_was_refused_and_hides_torch_advice(micro_checkpoint, tmp_path):
    path = _hostile("os.system in the weights", tmp_path / "pwned", micro_checkpoint)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    text = str(error.value)
    assert "posix.system" in text and "Nothing in it was run" in text
    # Not even in the chained exceptions a traceback would print.
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.ros
def test_node_refuses_a_hostile_checkpoint_and_stays_up(micro_checkpoint, tmp_path):
    from node_harness import start_node
    from ros_helpers import random_domain_id

    sentinel = tmp_path / "pwned"
    path = _hostile("os.system in the weights", sentinel, micro_checkpoint)
    with start_node(random_domain_id(), path) as node:
        node.wait_for("model failed to load", timeout=60)
        assert node.proc.poll() is None  # the node reports the failure and keeps running
    assert not sentinel.exists()
    assert "was refused" in node.output and "weights_only" not in node.output


# --------------------------------------------------------------------------- absurd configs


ABSURD_CONFIG = dict(MODEL_CONFIGS["vit_h"].to_dict(), embed_dim=8192, depth=64,
                     global_attn_indexes=[15, 31, 47, 63], aux_block_indexes=[15, 31, 47, 63])
"""About 200 GB of weights if it were built."""

ALLOCATION_PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from sam_mmseg_ros.model.checkpoint import CheckpointError, load_checkpoint

    torch.set_num_threads(1)
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    headroom = 256 << 20
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
    try:
        torch.empty(512 << 20, dtype=torch.uint8).fill_(1)
    except (MemoryError, RuntimeError):
        print("limit holds")
    try:
        load_checkpoint(sys.argv[1])
    except CheckpointError as exc:
        print("refused:", exc)
""")


def test_absurd_config_is_refused_without_allocating(tmp_path):
    path = tmp_path / "absurd.pt"
    torch.save({"format_version": 1, "config": ABSURD_CONFIG, "state_dict": {}}, path)
    # Under an address-space limit 256 MB above what the process already has: building the
    # model (or any real part of it) would fail with MemoryError/RuntimeError, not CheckpointError.
    done = subprocess.run([sys.executable, "-c", ALLOCATION_PROBE, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "limit holds"  # the probe can fail: a 512 MB allocation is refused
    assert lines[1].startswith(f"refused: {path} has an invalid model config")
    # 1280: ViT-H's width; 48: SAM2 Hiera-L's depth
    assert "embed_dim 8192 is outside (0, 1280]" in lines[1] and "depth 64 is outside (0, 48]" in lines[1]


def _with_config(good: Path, tmp_path: Path, **changes) -> Path:
    payload = _payload(good)
    payload["config"].update(changes)
    path = tmp_path / "changed.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"embed_dim": 8192}, "embed_dim 8192 is outside"),
    ({"num_classes": 10**6}, "num_classes 1000000 is outside (0, 255]"),
    ({"num_modalities": 9}, "num_modalities 9 is outside (0, 4]"),
    ({"mlp_ratio": float("inf")}, "mlp_ratio inf is outside"),
    ({"lora_alpha": float("nan")}, "lora_alpha nan is outside"),
    ({"depth": 10**300}, f"depth (a {(10**300).bit_length()}-bit integer) is outside"),
    ({"img_size": 1024, "patch_size": 4}, "more than 64 tokens per side"),
    ({"name": "vit_giant"}, "name 'vit_giant' is not a model of this version"),
    ({"depth": "2"}, "depth is a str, expected int"),
    ({"top_k": True}, "top_k is a bool"),
    ({"global_attn_indexes": [1.5]}, "global_attn_indexes must hold integers only"),
    ({"backdoor": 1}, "1 unknown fields ('backdoor')"),
    ({"global_attn_indexes": [5]}, "block indexes must lie in [0, 2)"),
])
def test_invalid_configs_name_the_file_and_field(micro_checkpoint, tmp_path, changes, message):
    path = _with_config(micro_checkpoint, tmp_path, **changes)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_official_configs_are_within_the_limits():
    for name, config in MODEL_CONFIGS.items():
        assert all(getattr(config, field) <= limit for field, limit in CONFIG_LIMITS.items()), name
    assert CONFIG_LIMITS["embed_dim"] == 1280 and CONFIG_LIMITS["depth"] == 48  # ViT-H's width, Hiera-L's depth


# --------------------------------------------------------------------------- tensors and archives


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.__setitem__("decoder.class_tokens.weight", [0.0] * 5), "not dense tensors"),
    (lambda s: s.__setitem__("router.gate.weight", torch.zeros(3, 3)), "with another shape (router.gate.weight"),
    (lambda s: s.__setitem__("router.gate.weight", torch.zeros_like(s["router.gate.weight"], dtype=torch.int64)),
     "with another type (router.gate.weight torch.int64 vs torch.float32)"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "1 unexpected (extra.weight)"),
    (lambda s: s.__setitem__("image_encoder.pos_embed", torch.zeros(0).to_sparse()), "not dense tensors"),
])
def test_tensors_are_checked_against_the_built_model(micro_checkpoint, tmp_path, edit, message):
    payload = _payload(micro_checkpoint)
    edit(payload["state_dict"])
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_sam_weights_that_are_not_tensors_are_refused(tmp_path):
    model = build_model("tiny", **MICRO)
    state = {f"image_encoder.{k}": v for k, v in model.image_encoder.state_dict().items() if "lora_" not in k}
    state["image_encoder.pos_embed"] = "not a tensor"
    with pytest.raises(CheckpointError, match="not dense tensors"):
        load_sam_weights(model, state)


def test_archive_sizes_are_bounded_before_loading(micro_checkpoint, monkeypatch):
    monkeypatch.setattr(safe_load, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(CheckpointError, match="GiB of content, more than"):
        load_checkpoint(micro_checkpoint)


def test_the_largest_model_fits_the_archive_bound():
    with torch.device("meta"):  # shapes only, no memory
        vit_h = build_model("vit_h")
    weights = sum(t.numel() * t.element_size() for t in vit_h.state_dict().values())
    assert 1.5 * weights < safe_load.MAX_CHECKPOINT_BYTES  # room for the optimizer's share


def test_truncated_or_foreign_files_are_checkpoint_errors(micro_checkpoint, tmp_path):
    data = micro_checkpoint.read_bytes()
    for name, content in (("cut.pt", data[: len(data) // 3]), ("empty.pt", b""), ("text.pt", b"hello")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="not a torch checkpoint archive") as error:
            load_checkpoint(path)
        assert str(path) in str(error.value)
