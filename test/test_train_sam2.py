"""`sam-mmseg train` with the SAM2 models: `--model tiny_memorysam` (or hiera_b+ ...) starting
from an official-layout SAM2 file given as `--sam-checkpoint`, checkpoints with their config,
resume with the prototype memory."""

from __future__ import annotations

import torch
from sam2_reference import meta_sam2_model, randomize

from sam_mmseg_ros.cli import main
from sam_mmseg_ros.data.deliver import write_deliver_fixture
from sam_mmseg_ros.model import MODEL_CONFIGS
from sam_mmseg_ros.model.checkpoint import load_checkpoint

torch.set_num_threads(1)
SIZE = 32


def test_cli_trains_memorysam_from_an_official_sam2_file_and_resumes(tmp_path):
    root = write_deliver_fixture(tmp_path / "deliver", frames_per_condition=1, size=(SIZE, SIZE))
    official = randomize(meta_sam2_model(MODEL_CONFIGS["tiny_memorysam"].with_overrides(img_size=SIZE)))
    sam2_file = tmp_path / "sam2.1_hiera_tiny_memorysam.pt"
    torch.save({"model": official.state_dict()}, sam2_file)
    out = tmp_path / "run"
    common = ["train", "--dataset", "deliver", "--data-root", str(root), "--conditions", "sun", "fog", "--model",
              "tiny_memorysam", "--img-size", str(SIZE), "--batch-size", "2", "--device", "cpu", "--out", str(out),
              "--no-progress"]
    assert main([*common, "--steps", "2", "--modality-dropout", "0.3", "--sam-checkpoint", str(sam2_file)]) == 0
    model, extra = load_checkpoint(out / "model.pt", map_location="cpu")
    assert model.config.name == "tiny_memorysam" and model.config.img_size == SIZE and extra["step"] == 2
    assert extra["train_config"]["sam_checkpoint"] == str(sam2_file)
    state, reference = model.state_dict(), official.state_dict()
    # The frozen trunk is SAM2's; the memory started from SAM2's and trained.
    assert torch.equal(state["image_encoder.trunk.blocks.3.attn.qkv.weight"],
                       reference["image_encoder.trunk.blocks.3.attn.qkv.weight"])
    assert not torch.equal(state["memory.memory_attention.layers.0.linear1.weight"],
                           reference["memory_attention.layers.0.linear1.weight"])
    seen = state["prototype_memory.seen"]
    assert seen.any()  # the prototype memory is part of the checkpoint
    assert main([*common, "--steps", "3", "--resume"]) == 0
    resumed, extra = load_checkpoint(out / "model.pt", map_location="cpu")
    assert extra["step"] == 3 and torch.all(resumed.state_dict()["prototype_memory.seen"] >= seen)
