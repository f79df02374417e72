"""Training: DELIVER reader, modality dropout, OHEM loss, the loop (learning, resume, DDP, CLI)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam_mmseg_ros.contracts import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD, MODALITIES, InputError
from sam_mmseg_ros.data.dataset import Augmentation, augment, modality_dropout
from sam_mmseg_ros.data.deliver import (
    DELIVER_CONDITIONS,
    DeliverDataset,
    decode_depth_png,
    deliver_camera,
    encode_depth_png,
    find_deliver_frames,
    iter_deliver_frames,
    write_deliver_fixture,
)
from sam_mmseg_ros.model.losses import LogDepthL1, OhemCrossEntropy, SegmentationLoss
from sam_mmseg_ros.sensors.depth import hha
from sam_mmseg_ros.sensors.encodings import DELIVER, NATIVE, EncodingError
from sam_mmseg_ros.train import TrainConfig, evaluate_miou, train

torch.set_num_threads(1)

# A 2-block tiny model with 8-pixel patches at 32x32: a training step on a batch of 5 takes
# ~0.05 s on one core.
SMALL_MODEL = {"patch_size": 8, "depth": 2, "global_attn_indexes": [1], "aux_block_indexes": [0, 1], "embed_dim": 64,
               "num_heads": 2, "out_chans": 64, "decoder_heads": 2, "decoder_depth": 1,
               "decoder_mlp_dim": 128, "window_size": 3, "lora_rank": 4, "lora_alpha": 4.0}
SIZE = 32


def small_config(tmp_path: Path, **overrides) -> TrainConfig:
    return replace(TrainConfig(model="tiny", img_size=SIZE, model_overrides=dict(SMALL_MODEL), lr=3e-3,
                               warmup_steps=5, batch_size=5, checkpoint_every=1000, log_every=1,
                               out_dir=str(tmp_path / "run"), device="cpu", progress=False), **overrides)


@pytest.fixture(scope="module")
def deliver_root(tmp_path_factory) -> Path:
    # Six classes, so five training frames show each several times and held-out frames hold no
    # class the model never saw.
    return write_deliver_fixture(tmp_path_factory.mktemp("deliver"), frames_per_condition=2, size=(SIZE, SIZE),
                                 class_ids=range(1, 7))


# --- DELIVER reader ---------------------------------------------------------------------------


def test_deliver_fixture_layout_and_read_back(tmp_path):
    root = write_deliver_fixture(tmp_path, frames_per_condition=1, size=(32, 48), seed=3)
    frames = find_deliver_frames(root, "val")
    assert [(f.condition, f.case) for f in frames] == [(c, k) for c in DELIVER_CONDITIONS
                                                       for k in ("normal", "eventlowres")]
    first = frames[0]
    expected = {"img": "rgb", "depth": "depth", "hha": "depth", "event": "event", "lidar": "lidar",
                "semantic": "semantic"}
    for folder, tag in expected.items():
        path = root / folder / first.condition / "val" / first.sequence / f"{first.frame}_{tag}_front.png"
        assert path.is_file(), path
    assert frames[1].sequence.endswith("_eventlowres")

    raw = np.asarray(Image.open(first.path("label")))[:, :, 0].astype(int)
    assert {0, 255, 27} <= set(np.unique(raw).tolist())
    frame = next(iter_deliver_frames(root, "val", ["cloud"]))
    assert frame["label"].dtype == np.uint8 and frame["rgb"].shape == (32, 48, 3)
    assert frame["lidar"].shape == (32, 48) and frame["unknown_labels"] == {27: 2}
    assert frame["depth"].dtype == np.float32 and np.isnan(frame["depth"][0]).all()  # sky: no return
    expected_label = np.where((raw >= 1) & (raw <= 25), raw - 1, IGNORE_LABEL)
    np.testing.assert_array_equal(frame["label"], expected_label)

    sample = DeliverDataset(root, "val", ["cloud"], size=(32, 48))[0]
    assert sample["images"].shape == (len(MODALITIES), 3, 32, 48) and sample["images"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["condition"] == "cloud" and sample["case"] == "normal"
    assert sample["unknown_labels"] == 2
    torch.testing.assert_close(sample["modality_mask"], torch.ones(4))
    rgb = torch.from_numpy(frame["rgb"]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(sample["images"][0], (rgb - mean) / std)
    # depth/ through the node's own HHA, with DELIVER's camera
    expected_hha = hha(frame["depth"], deliver_camera(48, 32)).transpose(2, 0, 1)
    np.testing.assert_allclose(sample["images"][1].numpy(), expected_hha, atol=1e-6)
    lidar = sample["images"][3]
    assert torch.equal(lidar[0], lidar[1]) and torch.equal(lidar[0], lidar[2]) and lidar.max() <= 100 / 255
    torch.testing.assert_close(lidar[0] * 255, torch.from_numpy(frame["lidar"]).float())
    np.testing.assert_array_equal(sample["label"].numpy(), expected_label)


def test_deliver_cases_lowres_events_subsets_and_encodings(tmp_path):
    root = write_deliver_fixture(tmp_path, frames_per_condition=1, size=(32, 32), splits=("test",),
                                 cases=("eventlowres", "lidarjitter"))
    lowres = find_deliver_frames(root, "test", ["night"], cases=["eventlowres"])
    assert [f.case for f in lowres] == ["eventlowres"]
    assert [f.case for f in find_deliver_frames(root, "test", cases=["normal"])] == ["normal"] * 5
    with pytest.raises(ValueError, match="unknown DELIVER case"):
        find_deliver_frames(root, "test", cases=["snow"])
    frame = next(iter_deliver_frames(root, "test", ["night"], cases=["eventlowres"]))
    assert frame["event"].shape == (16, 16, 3)  # the event sensor's own resolution
    sample = DeliverDataset(root, "test", ["night"], size=(32, 32), cases=["eventlowres"])[0]
    event = sample["images"][2].numpy()
    np.testing.assert_array_equal(event[:, ::2, ::2], frame["event"].transpose(2, 0, 1) / 255)  # nearest up

    sample = DeliverDataset(root, "test", ["night"], size=(16, 16), modalities=("rgb", "lidar"))[0]
    torch.testing.assert_close(sample["modality_mask"], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert sample["images"][1:3].abs().sum() == 0
    assert sample["label"].shape == (16, 16)
    values = set(sample["label"].unique().tolist())
    assert values <= set(range(25)) | {IGNORE_LABEL}  # nearest: no blended ids
    paper = DeliverDataset(root, "test", ["night"], size=(16, 16), encodings="deliver-hha")
    assert paper.encodings["depth"] == "deliver-hha-v1" and paper[0]["images"][1].max() > 0
    with pytest.raises(EncodingError, match=r"'event-count-v1'.*'carla-dvs-v1'"):
        DeliverDataset(root, "test", encodings="native")  # native event/LiDAR encodings: not in DELIVER
    with pytest.raises(FileNotFoundError, match="no DELIVER frames"):
        DeliverDataset(root, "train")


def test_deliver_depth_png_is_carla_24_bit_and_grey_images_are_refused():
    metres = np.array([[0.5, 12.25], [np.nan, 999.5]], np.float32)
    png = encode_depth_png(metres)
    decoded = decode_depth_png(png)
    np.testing.assert_allclose(decoded[0], metres[0], atol=1e-4)
    assert np.isnan(decoded[1]).all()  # no measurement and the far plane: both "no return"
    with pytest.raises(InputError, match="grey"):
        decode_depth_png(np.full((4, 4, 3), 80, np.uint8))


def test_deliver_metric_depth_target(tmp_path):
    from sam_mmseg_ros.data.deliver import read_deliver_frame

    root = write_deliver_fixture(tmp_path, frames_per_condition=1, size=(32, 48), splits=("val",), seed=3)
    frame = find_deliver_frames(root, "val", ["sun"])[0]
    metres = read_deliver_frame(frame, ("depth",))["depth"]
    for encodings in ("deliver", "deliver-hha"):  # the target is depth/ whichever file feeds the input
        sample = DeliverDataset(root, "val", ["sun"], size=(32, 48), encodings=encodings, depth_target=True)[0]
        assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (32, 48)
        np.testing.assert_allclose(sample["depth"].numpy(), np.nan_to_num(metres, nan=0.0))  # sky: 0, no target
        plain = DeliverDataset(root, "val", ["sun"], size=(32, 48), encodings=encodings)[0]
        assert "depth" not in plain and torch.equal(plain["images"], sample["images"])
    half = DeliverDataset(root, "val", ["sun"], size=(16, 24), depth_target=True)[0]["depth"].numpy()
    assert set(np.unique(half)) <= set(np.unique(np.nan_to_num(metres, nan=0.0)))  # nearest: no blended depths


# --- modality dropout -------------------------------------------------------------------------


def test_modality_dropout_never_drops_all_and_drops_any_subset():
    generator = torch.Generator().manual_seed(0)
    dropped = modality_dropout(torch.ones(4000, 4), generator, p=0.5)
    assert dropped.sum(dim=1).min() >= 1
    assert 0.3 < 1 - dropped[:, 0].mean() < 0.6  # RGB dropped as often as any other
    patterns = {tuple(row.int().tolist()) for row in dropped}
    assert len(patterns) == 15  # every non-empty subset survives, so every proper subset is dropped

    partial = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).repeat(500, 1)
    out = modality_dropout(partial, generator, p=0.9)
    assert out[:, [1, 3]].sum() == 0 and out.sum(dim=1).min() == 1
    assert out[:, 0].sum() > 0 and out[:, 2].sum() > 0  # the rescued modality is not always RGB
    assert torch.equal(modality_dropout(partial, generator, p=0.0), partial)


def test_rgb_alone_keeps_only_rgb_in_a_share_of_the_samples_that_have_it():
    from sam_mmseg_ros.data.dataset import rgb_alone

    mask = torch.ones(4000, 4)
    mask[:1000, 0] = 0.0  # no camera in these: nothing to keep
    out = rgb_alone(mask, torch.Generator().manual_seed(0), p=0.25)
    alone = (out[:, 0] == 1) & (out[:, 1:].sum(dim=1) == 0)
    assert 0.2 < float(alone[1000:].float().mean()) < 0.3
    assert torch.equal(out[:1000], mask[:1000])
    assert torch.equal(out[~alone], mask[~alone])
    assert torch.equal(rgb_alone(mask, torch.Generator(), p=0.0), mask)
    with pytest.raises(ValueError, match="rgb_alone"):
        rgb_alone(mask, torch.Generator(), p=1.5)


# --- augmentation -----------------------------------------------------------------------------


def test_augmentation_moves_modalities_and_labels_together_and_colours_only_rgb():
    generator = torch.Generator().manual_seed(3)
    b, h, w = 6, 24, 32
    label = torch.randint(0, 8, (b, h, w))
    images = torch.zeros(b, 4, 3, h, w)
    images[:, 1] = label[:, None].float() / 10  # depth slot: the label, so geometry can be compared
    images[:, 3] = (label[:, None] == 3).float()  # a sparse "LiDAR" raster
    images[:, 0] = torch.randn(b, 3, h, w)
    mask = torch.ones(b, 4)
    mask[1, 2] = 0.0  # an absent event slot stays all zeros
    depth = label.float() * 2.0  # a depth target moves with the label
    out, out_label, out_depth = augment(images, mask, label, generator, Augmentation(crop=1.0, flip=0.5, blur=0.5),
                                        depth=depth)
    assert torch.equal(out_depth, out_label.float() * 2.0)
    assert out.shape == images.shape and out_label.shape == label.shape and out_label.dtype == label.dtype
    assert torch.equal(out[:, 1], out_label[:, None].float().expand(-1, 3, -1, -1) / 10)  # moved together
    assert set(out[:, 3].unique().tolist()) <= {0.0, 1.0}  # nearest: no LiDAR value no sensor made
    assert out[1, 2].abs().sum() == 0
    assert not torch.equal(out[:, 0], images[:, 0])
    again = augment(images, mask, label, torch.Generator().manual_seed(3), Augmentation(crop=1.0, flip=0.5, blur=0.5))
    assert torch.equal(again[0], out) and torch.equal(again[1], out_label)  # the generator decides


# --- loss -------------------------------------------------------------------------------------


def _two_class_logits(p_true: list[float]) -> torch.Tensor:
    """[1, 2, 1, N] logits whose class-1 softmax probability is p_true (labels are all 1)."""
    p = torch.tensor(p_true)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).view(1, 2, 1, -1)


def test_ohem_hand_example():
    logits = _two_class_logits([0.9, 0.5, 0.2, 0.3])
    label = torch.tensor([[[1, 1, 1, IGNORE_LABEL]]])
    # -log 0.7 = 0.357: the 0.5 and 0.2 pixels are hard, the 0.9 one easy, the last ignored.
    hard = (-math.log(0.5) - math.log(0.2)) / 2
    assert OhemCrossEntropy(thresh=0.7)(logits, label).item() == pytest.approx(hard, rel=1e-5)
    # All easy: min_kept (half of the 2 labelled pixels) keeps the hardest one.
    easy = _two_class_logits([0.9, 0.95])
    assert OhemCrossEntropy(0.7, min_kept_fraction=0.5)(easy, torch.ones(1, 1, 2, dtype=torch.long)).item() \
        == pytest.approx(-math.log(0.9), rel=1e-5)
    loss = SegmentationLoss(aux_weight=0.4)({"logits": logits, "aux_logits": easy.repeat(1, 1, 1, 2)},
                                            torch.tensor([[[1, 1, 1, IGNORE_LABEL]]]))
    aux = OhemCrossEntropy()(easy.repeat(1, 1, 1, 2), torch.tensor([[[1, 1, 1, IGNORE_LABEL]]])).item()
    assert loss["loss"].item() == pytest.approx(hard + 0.4 * aux, rel=1e-5)
    all_ignored = torch.full((1, 1, 4), IGNORE_LABEL)
    zero = OhemCrossEntropy()(logits.requires_grad_(), all_ignored)
    assert zero.item() == 0 and zero.requires_grad


def test_class_balanced_ohem_weighs_the_hard_pixels_by_class():
    logits = torch.stack([torch.zeros(4), torch.log(torch.tensor([0.5, 0.2, 0.5, 0.9]) / 0.5)]).view(1, 2, 1, 4)
    # Pixels 0 and 1 are class 1 (probability 0.5 and 0.2: hard), 2 and 3 class 0 (0.5 and 0.36: hard).
    label = torch.tensor([[[1, 1, 0, 0]]])
    plain = F.cross_entropy(logits, label, reduction="none").view(-1)
    hard = plain > -math.log(0.7)
    weights = torch.tensor([3.0, 1.0])
    w = weights[label.view(-1)][hard]
    expected = float((plain[hard] * w).sum() / w.sum())
    got = OhemCrossEntropy(thresh=0.7, class_weights=weights)(logits, label).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(float(plain[hard].mean()), rel=1e-3)


def test_amp_on_the_cpu_is_bf16_or_says_it_is_off(caplog):
    from sam_mmseg_ros.train import _amp_dtype

    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="sam_mmseg_ros.train"):
        assert _amp_dtype(TrainConfig(amp="auto"), cpu) is None
    assert "mixed precision off on cpu" in caplog.text
    assert _amp_dtype(TrainConfig(amp="bf16"), cpu) == torch.bfloat16
    assert _amp_dtype(TrainConfig(amp="off"), cpu) is None
    with pytest.raises(ValueError, match="needs CUDA"):
        _amp_dtype(TrainConfig(amp="fp16"), cpu)


def test_rgb_only_pretraining_encodes_only_rgb_and_matches_the_full_forward():
    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.train import _RGBOnlyForward, rgb_only_shortcut

    torch.manual_seed(0)
    overrides = {k: v for k, v in SMALL_MODEL.items()}
    for router, mean in (("sigmoid", "plain"), ("spatial", "learned"), ("softmax", "none")):
        model = build_model("tiny", img_size=SIZE, router=router, fusion_mean=mean, **overrides).eval()
        config = TrainConfig(rgb_only=True, train_experts=False)
        assert rgb_only_shortcut(model, config) and not rgb_only_shortcut(model, replace(config, rgb_only=False))
        images = torch.randn(6, 4, 3, SIZE, SIZE)  # 6: not a multiple of 4 modalities
        mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(6, 1)
        with torch.no_grad():
            want = model.forward_logits(images * mask[:, :, None, None, None], mask)
            got = _RGBOnlyForward(model)(images, mask)
        for key in ("logits", "aux_logits", "router_weights"):
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        model.image_encoder.blocks[0].attn.qkv.lora_b_q.add_(0.1)  # trained experts: not valid any more
    assert not rgb_only_shortcut(model, config)


def test_log_depth_l1_hand_example():
    depth = torch.tensor([[[2.0, 0.0], [8.0, float("nan")]]])
    log_depth = torch.log(torch.tensor([[[1.0, 5.0], [8.0, 3.0]]]))
    # |log 1 - log 2| and |log 8 - log 8| over the two known pixels
    assert LogDepthL1()(log_depth, depth).item() == pytest.approx(np.log(2.0) / 2)
    zero = LogDepthL1()(log_depth.requires_grad_(), torch.zeros_like(depth))
    assert zero.item() == 0.0 and zero.requires_grad


# --- training loop ----------------------------------------------------------------------------


def test_training_learns_and_beats_untrained(deliver_root, tmp_path):
    train_set = torch.utils.data.Subset(DeliverDataset(deliver_root, "train", size=(SIZE, SIZE)), range(5))
    val_set = DeliverDataset(deliver_root, "val", size=(SIZE, SIZE))
    config = small_config(tmp_path, steps=80, lr=1e-2, train_encoder=True, modality_dropout=0.0)
    result = train(config, train_set, val_set)
    losses = result["losses"]
    assert result["step"] == 80 and len(losses) == 80
    with pytest.raises(ValueError, match="dataset says"):  # a config contradicting its data
        train(replace(config, encodings=NATIVE, steps=0), train_set)
    assert np.mean(losses[-5:]) <= 0.2 * losses[0], losses[::10]

    from sam_mmseg_ros.model import build_model

    torch.manual_seed(config.seed)  # the very weights training started from
    untrained = evaluate_miou(build_model("tiny", img_size=SIZE, **SMALL_MODEL), val_set, torch.device("cpu"))
    trained = evaluate_miou(result["model"], val_set, torch.device("cpu"))
    assert trained["miou"] == pytest.approx(result["val_miou"])
    # Five frames teach colour -> class only roughly (held-out accuracy ~0.2-0.35 against ~0.05).
    assert trained["pixel_accuracy"] > untrained["pixel_accuracy"] + 0.08, (trained, untrained)
    assert trained["miou"] > untrained["miou"] + 0.02, (trained, untrained)

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records[:80]] == list(range(1, 81))
    assert {"loss", "lr", "time"} <= set(records[0]) and records[-1]["val_miou"] == result["val_miou"]
    assert records[0]["lr"] < records[5]["lr"] > records[79]["lr"]  # warmup, then poly decay


class _CrashAfter(torch.utils.data.Dataset):
    """Raises once `limit` samples were read: a run killed mid-training."""

    def __init__(self, dataset, limit: int):
        self.dataset, self.limit, self.reads = dataset, limit, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > self.limit:
            raise RuntimeError("simulated crash")
        return self.dataset[index]


def test_resume_continues_exactly(deliver_root, tmp_path):
    dataset = torch.utils.data.Subset(DeliverDataset(deliver_root, "train", size=(SIZE, SIZE)), range(8))
    config = small_config(tmp_path, steps=6, batch_size=3, modality_dropout=0.5, checkpoint_every=3)
    straight = train(replace(config, out_dir=str(tmp_path / "straight")), dataset)

    crashed = replace(config, out_dir=str(tmp_path / "crashed"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, _CrashAfter(dataset, limit=3 * 3 + 2))
    from sam_mmseg_ros.model.checkpoint import load_checkpoint

    model, extra = load_checkpoint(tmp_path / "crashed" / "last.pt", map_location="cpu")
    assert extra["step"] == 3 and extra["train_config"]["modality_dropout"] == 0.5
    assert model.config.depth == SMALL_MODEL["depth"]

    resumed = train(replace(crashed, resume=str(tmp_path / "crashed" / "last.pt")), dataset)
    assert resumed["step"] == 6 and len(resumed["losses"]) == 3
    np.testing.assert_allclose(resumed["losses"], straight["losses"][3:], rtol=1e-5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# --- CLI and multi-process --------------------------------------------------------------------


def test_cli_trains_on_deliver_folder(deliver_root, tmp_path):
    from sam_mmseg_ros.cli import main
    from sam_mmseg_ros.model.checkpoint import load_checkpoint

    out = tmp_path / "cli"
    assert main(["train", "--dataset", "deliver", "--data-root", str(deliver_root), "--conditions", "sun", "fog",
                 "--model", "tiny", "--img-size", "32", "--steps", "2", "--batch-size", "2", "--lr", "1e-3",
                 "--modality-dropout", "0.3", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    model, extra = load_checkpoint(out / "model.pt", map_location="cpu")
    assert extra["step"] == 2 and extra["train_config"]["img_size"] == 32 and model.config.img_size == 32
    assert extra["encodings"] == DELIVER  # what the node will encode its inputs as
    assert main(["train", "--dataset", "deliver", "--data-root", str(deliver_root), "--encodings", "native",
                 "--out", str(tmp_path / "refused"), "--no-progress"]) == 2  # DELIVER holds no native encodings
    assert main(["train", "--dataset", "deliver", "--data-root", str(deliver_root), "--conditions", "sun",
                 "--model", "tiny", "--img-size", "32", "--steps", "3", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "model.pt", map_location="cpu")[1]["step"] == 3


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {test_dir!r})
torch.set_num_threads(1)
from test_train import small_config, SIZE, SMALL_MODEL
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.data.deliver import DeliverDataset
from sam_mmseg_ros.train import train
from pathlib import Path

out = Path({out!r})
dataset = DeliverDataset({root!r}, "train", size=(SIZE, SIZE))
config = small_config(out, steps=2, batch_size=2, modality_dropout=0.5)
val = DeliverDataset({root!r}, "val", ["fog", "rain", "sun"], size=(SIZE, SIZE))
result = train(config, dataset, val)  # joins the torchrun group (gloo on the CPU) and leaves it
torch.manual_seed(config.seed)
initial = build_model("tiny", img_size=SIZE, **SMALL_MODEL)
flat = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])
torch.save({{"losses": result["losses"], "params": flat(result["model"]), "initial": flat(initial),
            "step": result["step"], "val_miou": result.get("val_miou")}},
           out / f"rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(deliver_root, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(test_dir=str(Path(__file__).parent), out=str(tmp_path),
                                                        root=str(deliver_root))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == 2 and 0 <= ranks[0]["val_miou"] <= 1 and ranks[1]["val_miou"] is None
    assert ranks[0]["losses"] != ranks[1]["losses"]  # different shards ...
    assert not torch.equal(ranks[0]["params"], ranks[0]["initial"])  # ... one trained model
    torch.testing.assert_close(ranks[0]["params"], ranks[1]["params"], rtol=0, atol=0)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 2] and "val_miou" in records[-1]  # rank 0 alone logs


# --- the depth task ---------------------------------------------------------------------------


def test_multi_task_training_learns_depth_and_labels(deliver_root, tmp_path):
    train_set = torch.utils.data.Subset(DeliverDataset(deliver_root, "train", size=(SIZE, SIZE), depth_target=True),
                                        range(5))
    val_set = DeliverDataset(deliver_root, "val", size=(SIZE, SIZE), depth_target=True)
    overrides = {**SMALL_MODEL, "adapters": "ta_lora", "tasks": ["semantic", "depth"]}
    config = small_config(tmp_path, steps=60, lr=3e-3, train_encoder=True, modality_dropout=0.0,
                          model_overrides=overrides)
    from sam_mmseg_ros.model import build_model

    torch.manual_seed(config.seed)
    untrained = evaluate_miou(build_model("tiny", img_size=SIZE, **overrides), val_set, torch.device("cpu"))
    result = train(config, train_set, val_set)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    depth_losses = [r["loss_depth"] for r in records if "loss_depth" in r]
    assert len(depth_losses) == 60 and np.mean(depth_losses[-5:]) < 0.5 * depth_losses[0], depth_losses[::10]
    # Five frames of walls 4.5-12 m away (untrained: a flat 10 m, AbsRel ~0.34): the training frames
    # are learned (~0.03), held-out ones reach ~0.22 after 60 steps.
    assert evaluate_miou(result["model"], train_set, torch.device("cpu"))["depth"]["abs_rel"] < 0.1
    assert result["val_depth"]["abs_rel"] < 0.8 * untrained["depth"]["abs_rel"], (result["val_depth"], untrained)
    assert result["val_depth"]["delta1"] > untrained["depth"]["delta1"] + 0.05
    assert records[-1]["val_depth"] == result["val_depth"]


def test_a_depth_model_needs_depth_in_the_data(deliver_root, tmp_path):
    train_set = torch.utils.data.Subset(DeliverDataset(deliver_root, "train", size=(SIZE, SIZE)), range(5))
    config = small_config(tmp_path, steps=1, model_overrides={**SMALL_MODEL, "tasks": ["semantic", "depth"]})
    with pytest.raises(ValueError, match="gives no depth"):
        train(config, train_set)


def test_init_from_a_single_task_checkpoint(deliver_root, tmp_path):
    """A multi-task model started from a single-task one: same semantic output, decoder copied."""
    from sam_mmseg_ros.cli import main
    from sam_mmseg_ros.model.checkpoint import CheckpointError, init_from_checkpoint, load_checkpoint

    single = train(small_config(tmp_path, steps=2, batch_size=2), torch.utils.data.Subset(
        DeliverDataset(deliver_root, "train", size=(SIZE, SIZE)), range(4)))["checkpoint"]
    stored, _ = load_checkpoint(single)
    model = init_from_checkpoint(single, adapters="ta_lora", tasks=("semantic", "depth")).eval()
    images, mask = torch.randn(1, 4, 3, SIZE, SIZE), torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    with torch.no_grad():
        a, b = model(images, mask), stored(images, mask)
    assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["confidence"], b["confidence"], atol=1e-6)
    assert torch.equal(model.depth_decoder.transformer.layers[0].mlp.lin1.weight,
                       stored.decoder.transformer.layers[0].mlp.lin1.weight)
    assert model.depth_decoder.class_tokens.weight.shape[0] == 1
    with pytest.raises(CheckpointError, match="with another shape"):
        init_from_checkpoint(single, lora_rank=2)

    out = tmp_path / "cli"
    assert main(["train", "--dataset", "deliver", "--data-root", str(deliver_root), "--conditions", "sun",
                 "--init-checkpoint", single, "--adapters", "ta_lora", "--tasks", "semantic", "depth",
                 "--img-size", str(SIZE), "--steps", "1", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out), "--no-progress"]) == 0
    trained, extra = load_checkpoint(out / "model.pt")
    assert trained.config.tasks == ("semantic", "depth") and trained.config.adapters == "ta_lora"


def test_depth_holes_model_and_training_augmentation():
    from sam_mmseg_ros.data.depth_holes import RANGE_M, depth_hole_mask
    from sam_mmseg_ros.train import _with_depth_holes

    depth = np.tile(np.linspace(1.0, 100.0, 64, dtype=np.float32), (32, 1))
    holes = depth_hole_mask(depth, np.random.default_rng(0))
    assert holes.shape == (32, 64) and holes[:, depth[0] > RANGE_M[1]].all() and not holes.all()
    assert np.array_equal(holes, depth_hole_mask(depth, np.random.default_rng(0)))  # reproducible

    images = torch.rand(6, 4, 3, 32, 64) + 0.1
    mask = torch.ones(6, 4)
    mask[5, 1] = 0.0  # no depth camera in this sample: nothing to punch
    config = TrainConfig(depth_holes=0.99, seed=3)
    out = _with_depth_holes(images, mask, torch.from_numpy(np.stack([depth] * 6)), config, rank=0, step=7)
    assert torch.equal(out[:, [0, 2, 3]], images[:, [0, 2, 3]])  # other modalities untouched
    punched = (out[:, 1] == 0).all(dim=1)  # [6, 32, 64]: pixels zero in all 3 channels
    assert all(punched[i][:, depth[0] > RANGE_M[1]].all() for i in range(5)) and not punched[5].any()
    assert torch.equal(out, _with_depth_holes(images, mask, torch.from_numpy(np.stack([depth] * 6)), config, 0, 7))
    assert torch.equal(_with_depth_holes(images, mask, torch.from_numpy(np.stack([depth] * 6)),
                                         TrainConfig(depth_holes=1e-9), 0, 7), images)


def test_the_shipped_preset_hands_each_stage_to_the_next(deliver_root, tmp_path):
    """`synthetic-tiny` chains as shipped (a 60-minute run is the only other check): stage 1
    pretrains on RGB with the learned mean term and frozen experts; stage 2 starts from it with
    the joint router and no mean term, and trains the experts and the encoder."""
    from sam_mmseg_ros.model.checkpoint import load_checkpoint
    from sam_mmseg_ros.train import run_preset

    data = torch.utils.data.Subset(DeliverDataset(deliver_root, "train", size=(SIZE, SIZE)), range(4))
    result = run_preset("synthetic-tiny", {"img_size": SIZE, "steps": 2, "batch_size": 2, "warmup_steps": 1,
                                           "out_dir": str(tmp_path), "device": "cpu", "progress": False}, data)
    pretrained, _ = load_checkpoint(tmp_path / "pretrain" / "model.pt")
    final, _ = load_checkpoint(result["checkpoint"])
    assert (pretrained.config.router, pretrained.config.fusion_mean) == ("spatial", "learned")
    assert (final.config.router, final.config.fusion_mean) == ("spatial_joint", "none")
    before, after = pretrained.state_dict(), final.state_dict()
    assert not before["image_encoder.blocks.0.attn.qkv.lora_b_q"].any()
    assert after["image_encoder.blocks.0.attn.qkv.lora_b_q"].any()  # the experts learned in stage 2...
    assert not torch.equal(before["image_encoder.blocks.0.attn.proj.weight"],
                           after["image_encoder.blocks.0.attn.proj.weight"])  # ...and so did the encoder
    assert after["router.joint_gate.weight"].any()
