"""The ONNX exporter's chatter goes to DEBUG: nothing of it on the screen at INFO, all of it
available at DEBUG, and the loggers, warning filters and stdout are as they were afterwards."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest
import torch

from sam_mmseg_ros.engine.export import export_model
from sam_mmseg_ros.engine.exporter_output import EXPORTER_LOGGERS, LOG, exporter_output_at_debug
from sam_mmseg_ros.model import build_model

# Module-level loggers, as the exporter's modules create them when imported (before any export).
FOLDING = logging.getLogger("onnxscript.optimizer._constant_folding")
REGISTRATION = logging.getLogger("torch.onnx._internal.exporter._registration")


def _state():
    return {name: (logging.getLogger(name).handlers, logging.getLogger(name).propagate)
            for name in (*EXPORTER_LOGGERS, FOLDING.name, REGISTRATION.name)}


def _chatter():
    FOLDING.info("Skipping constant folding for node")
    REGISTRATION.warning("torchvision is not installed")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
    print("[torch.onnx] Obtain model graph")


@pytest.fixture
def torch_onnx_handler():
    """torch.onnx as torch configures it: its own stderr handler, not propagating."""
    logger = logging.getLogger("torch.onnx")
    saved = logger.handlers, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    logger.handlers, logger.propagate = [handler], False
    yield logger
    logger.handlers, logger.propagate = saved


def test_chatter_leaves_info_and_the_screen(caplog, capsys, torch_onnx_handler):
    before = _state()
    filters = list(warnings.filters)
    with caplog.at_level(logging.INFO), exporter_output_at_debug():
        _chatter()
    assert caplog.records == []
    assert capsys.readouterr() == ("", "")
    assert _state() == before
    assert warnings.filters == filters


def test_chatter_is_kept_at_debug(caplog, capsys, torch_onnx_handler):
    with caplog.at_level(logging.DEBUG), exporter_output_at_debug():  # as under `sam-mmseg -v`
        _chatter()
    assert capsys.readouterr() == ("", "")
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    text = caplog.text
    for said in ("Skipping constant folding", "torchvision is not installed", "FutureWarning",
                 "[torch.onnx] Obtain model graph"):
        assert said in text
    # A record keeps the name of the exporter logger that wrote it.
    assert FOLDING.name in {r.name for r in caplog.records}


def test_a_failed_export_still_restores_and_keeps_its_output(caplog):
    before = _state()
    with caplog.at_level(logging.DEBUG, logger=LOG.name), pytest.raises(RuntimeError, match="boom"):
        with exporter_output_at_debug():
            print("half way")
            raise RuntimeError("boom")
    assert _state() == before and "half way" in caplog.text


def test_a_real_export_is_quiet_at_info(tmp_path, caplog, capfd):
    torch.manual_seed(0)
    model = build_model("tiny", img_size=32, depth=1, global_attn_indexes=(0,), aux_block_indexes=(0,),
                        decoder_depth=1)
    with caplog.at_level(logging.INFO):
        export_model(model, tmp_path / "m.onnx", input_size=(32, 32), metadata={"trained": False})
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), (out + err)[:2000]
    assert [r.name for r in caplog.records] == ["sam_mmseg_ros.engine.export"]  # only "wrote ..."
