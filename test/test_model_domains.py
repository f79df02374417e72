"""MoDA domain adapters: the pool on the encoder, per-frame choice, pinning, and continual learning
that leaves everything an earlier domain uses bit-identical (model/domain_adapters.py, continual.py)."""

from __future__ import annotations

import pytest
import torch

from sam_mmseg_ros.continual import (
    ContinualConfig,
    add_domains,
    domain_logits,
    rgb_inputs,
    rgb_uint8,
    run_continual,
    sample_buffer,
    train_selector,
)
from sam_mmseg_ros.data.synthetic import SyntheticDataset
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.model.checkpoint import load_checkpoint
from sam_mmseg_ros.model.config import MODEL_CONFIGS
from sam_mmseg_ros.train import TrainConfig, train

SIZE = 64
SMALL = {"img_size": SIZE, "depth": 2, "global_attn_indexes": (1,), "aux_block_indexes": (0, 1), "decoder_depth": 1}
"""`tiny` shortened to keep these tests fast: a selector block and an adapted block, windowed and global."""


def _moda(domains=("sun", "night"), seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("tiny", **SMALL, adapters="moda", domains=domains, domain_split=1).eval()


def _plain():
    return build_model("tiny", **SMALL).eval()


def _randomize_adapters(model, std=0.2):
    """Trained-looking adapters: every B factor (encoder q/v and decoder layers) non-zero."""
    with torch.no_grad():
        for adapter in model.domains.adapters:
            for name, p in adapter.named_parameters():
                if name.startswith(("b_", "decoder_b")):
                    p.normal_(0.0, std)


def _inputs(frames=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 4, 3, SIZE, SIZE, generator=generator), torch.ones(frames, 4)


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _identical(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Names under `prefix` whose tensors differ in any bit."""
    return [k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def frames():
    """Two synthetic domains, the same streets at noon and at night (rendered once per module)."""
    return {d: SyntheticDataset(seed=0, num_frames=8, size=(SIZE, SIZE), conditions=(d,)) for d in ("sun", "night")}


# ------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    ({"adapters": "moda"}, "need 1 to"),
    ({"adapters": "moda", "domains": ("sun", "sun")}, "distinct identifiers"),
    ({"adapters": "moda", "domains": ("sun",), "domain_split": 4}, "domain_split"),
    ({"domains": ("sun",)}, "only for 'moda'"),
    ({"adapters": "mixture"}, "adapters must be one of"),
    ({"adapters": "moda", "domains": ("sun",), "backbone": "hiera"}, "backbone 'vit'"),
])
def test_config_refuses_inconsistent_domain_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        MODEL_CONFIGS["tiny"].with_overrides(**overrides)


@pytest.mark.parametrize("change, message", [
    ({"domains": [f"d{i}" for i in range(40)]}, "domains must hold at most 32 strings"),
    ({"domains": ["sun", 3]}, "strings of at most"),
    ({"domain_tokens": 10_000}, "domain_tokens 10000 is outside"),
])
def test_a_stored_config_is_checked_against_the_domain_limits_before_anything_is_built(change, message):
    from sam_mmseg_ros.model.config import config_from_untrusted

    stored = MODEL_CONFIGS["tiny_moda"].to_dict()
    assert config_from_untrusted(stored) == MODEL_CONFIGS["tiny_moda"]
    with pytest.raises(ValueError, match=message):
        config_from_untrusted({**stored, **change})


def test_config_round_trips_and_splits_after_the_first_global_block():
    config = MODEL_CONFIGS["tiny_moda"]
    assert config.selector_blocks == min(config.global_attn_indexes) + 1 == 2
    assert type(config).from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------- the pool


def test_new_adapters_change_nothing_and_outputs_follow_the_contract():
    moda, plain = _moda(), _plain()
    plain.load_state_dict({k: v for k, v in moda.state_dict().items() if not k.startswith("domains.")})
    images, mask = _inputs()
    with torch.no_grad():
        out, reference = moda(images, mask), plain(images, mask)
    assert list(out) == ["labels", "confidence", "router_weights", "domain", "domain_confidence"]
    assert out["domain"].dtype == torch.int32 and out["domain"].shape == (2,)
    assert out["domain_confidence"].dtype == torch.float32 and ((out["domain_confidence"] > 0) &
                                                                (out["domain_confidence"] <= 1)).all()
    assert torch.equal(out["labels"], reference["labels"])
    torch.testing.assert_close(out["confidence"], reference["confidence"], rtol=0, atol=1e-6)


def test_each_frame_uses_its_own_adapter():
    model = _moda()
    _randomize_adapters(model)
    images, mask = _inputs()
    with torch.no_grad():
        mixed = model.forward_logits(images, mask, domain=torch.tensor([0, 1]))["logits"]
        first = model.forward_logits(images[:1], mask[:1], domain=torch.tensor([0]))["logits"]
        second = model.forward_logits(images[1:], mask[1:], domain=torch.tensor([1]))["logits"]
        other = model.forward_logits(images[1:], mask[1:], domain=torch.tensor([0]))["logits"]
    torch.testing.assert_close(mixed, torch.cat([first, second]), rtol=0, atol=1e-5)
    assert (second - other).abs().max() > 1e-3  # the adapters differ, so does the result


def test_the_selector_chooses_in_the_forward_and_a_pin_overrides_it():
    model = _moda(domains=("sun", "cloud", "night"))
    _randomize_adapters(model)
    images, mask = _inputs(frames=3)
    with torch.no_grad():
        logits = domain_logits(model, images)
        out = model(images, mask)
        assert torch.equal(out["domain"].long(), logits.argmax(dim=1))
        forced = model.forward_logits(images, mask, domain=logits.argmax(dim=1))["logits"]
        assert torch.equal(model.forward_logits(images, mask)["logits"], forced)
        model.domains.pin("night")
        pinned = model(images, mask)
    assert pinned["domain"].tolist() == [2, 2, 2] and model.domains.pinned_name == "night"
    torch.testing.assert_close(pinned["domain_confidence"], logits.softmax(dim=1)[:, 2])
    with pytest.raises(ValueError, match="unknown domain 'fog'"):
        model.domains.pin("fog")


def test_a_depth_model_with_domain_adapters_keeps_its_pin_without_its_depth_task():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny", **SMALL, adapters="moda", domains=("sun", "night"), domain_split=1,
                            tasks=("semantic", "depth")).eval()
    _randomize_adapters(model)
    model.domains.pin("night")
    images, mask = _inputs(frames=2)
    with torch.no_grad():
        out = model(images, mask)
        semantic = model.with_tasks(("semantic",))
        only = semantic(images, mask)
    assert tuple(out) == model.output_names == ("labels", "confidence", "router_weights", "depth", "domain",
                                                "domain_confidence")
    assert semantic.domains.pinned_name == "night" and only["domain"].tolist() == [1, 1]
    assert torch.equal(only["labels"], out["labels"]) and "depth" not in only


def test_the_selector_reads_only_the_camera_slot():
    model = _moda()
    images, _ = _inputs()
    others = images.clone()
    others[:, 1:] = torch.randn_like(others[:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(domain_logits(model, images), domain_logits(model, others), rtol=0, atol=0)


def test_outside_a_domain_pass_the_encoder_is_the_shared_one():
    model = _moda()
    _randomize_adapters(model)
    plain = _plain()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("domains.")})
    images, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(images.flatten(0, 1))[0],
                                   plain.image_encoder(images.flatten(0, 1))[0], rtol=0, atol=0)


def test_growing_the_pool_keeps_every_weight_and_copies_the_last_adapter():
    model = _moda(domains=("sun",))
    _randomize_adapters(model)
    grown = add_domains(model, ("cloud", "night"))
    assert grown.config.domains == ("sun", "cloud", "night")
    before, after = model.state_dict(), grown.state_dict()
    assert not _identical(before, after, prefix="image_encoder.") and not _identical(before, after, "decoder.")
    first = {k[len("domains.adapters.0."):]: v for k, v in before.items() if k.startswith("domains.adapters.0.")}
    assert {"a_q", "b_q", "a_v", "b_v", "decoder_a.0", "decoder_b.0"} <= set(first)
    for index in (1, 2):
        for name, value in first.items():
            assert torch.equal(after[f"domains.adapters.{index}.{name}"], value), name
    assert add_domains(build_model("tiny", img_size=SIZE), ("sun",)).config.adapters == "moda"


# ------------------------------------------------------------------------------- learning


def _train_domain(path, name, data, tmp_path):
    config = TrainConfig(init_checkpoint=str(path), domain=name, steps=2, batch_size=2, warmup_steps=1, lr=1e-2,
                         out_dir=str(tmp_path / name), progress=False, checkpoint_every=100)
    return train(config, data)["model"]


def test_learning_a_domain_leaves_earlier_adapters_and_the_frozen_encoder_bit_identical(frames, tmp_path):
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    first = _moda(domains=("sun",))
    first = _train_domain(save_checkpoint(tmp_path / "sun.pt", first), "sun", frames["sun"], tmp_path)
    learned = _snapshot(first)
    grown = add_domains(first, ("night",))
    second = _train_domain(save_checkpoint(tmp_path / "night.pt", grown), "night", frames["night"], tmp_path)
    after = _snapshot(second)
    assert not _identical(learned, after, prefix="domains.adapters.0.")
    assert not _identical(learned, after, prefix="image_encoder.")  # frozen SAM weights and experts
    assert not [k for k in learned if not k.startswith("domains.") and not torch.equal(learned[k], after[k])]
    changed = _identical({k: grown.state_dict()[k] for k in after}, after, prefix="domains.adapters.1.")
    assert changed  # the new domain's adapter did learn

    replay = {"sun": sample_buffer(frames["sun"], 2, 0), "night": sample_buffer(frames["night"], 2, 1)}
    train_selector(second, replay, epochs=1, batch_size=2)
    selected = _snapshot(second)
    assert not [k for k in after if not k.startswith("domains.selector.") and not torch.equal(after[k], selected[k])]


def test_the_selector_learns_domains_from_a_small_replay_buffer(frames):
    model = _moda()
    replay = {name: sample_buffer(data, 4, seed) for seed, (name, data) in enumerate(frames.items())}
    losses = train_selector(model, replay, epochs=8, lr=3e-3, batch_size=4)
    assert losses[-1] < losses[0]
    held_out = {name: rgb_uint8(torch.stack([data[i]["images"] for i in range(len(data))]))
                for name, data in frames.items()}
    with torch.no_grad():
        for index, name in enumerate(model.domains.names):
            images, _ = rgb_inputs(held_out[name], 4)
            assert (domain_logits(model, images).argmax(dim=1) == index).all(), name


def test_rgb_buffer_round_trips_the_camera_image(frames):
    images = torch.stack([frames["sun"][i]["images"] for i in range(2)])
    rgb = rgb_uint8(images)
    restored, mask = rgb_inputs(rgb, 4)
    assert rgb.dtype == torch.uint8 and mask.tolist() == [[1, 0, 0, 0]] * 2
    torch.testing.assert_close(restored[:, 0], images[:, 0], rtol=0, atol=0.5 / 255 / 0.224)


def test_continual_run_writes_one_checkpoint_that_a_later_run_extends(frames, tmp_path):
    val = {name: torch.utils.data.Subset(data, range(2)) for name, data in frames.items()}
    overrides = {**SMALL, "global_attn_indexes": [1], "aux_block_indexes": [0, 1], "domain_split": 1}
    del overrides["img_size"]
    train_fields = {"model": "tiny", "img_size": SIZE, "model_overrides": overrides, "batch_size": 2,
                    "warmup_steps": 1, "progress": False}
    first = run_continual(ContinualConfig(domains=("sun",), steps=1, buffer_size=2, selector_epochs=1,
                                          out_dir=str(tmp_path / "a"), train=train_fields), frames, val)
    model, extra = load_checkpoint(first["checkpoint"])
    assert model.config.domains == ("sun",) and set(extra["replay"]) == {"sun"}
    second = run_continual(ContinualConfig(domains=("night",), steps=1, buffer_size=2, selector_epochs=1,
                                           init_checkpoint=first["checkpoint"], out_dir=str(tmp_path / "b"),
                                           train=train_fields), frames, val)
    model, extra = load_checkpoint(second["checkpoint"])
    assert model.config.domains == ("sun", "night") and set(extra["replay"]) == {"sun", "night"}
    assert [row["after"] for row in second["rows"]] == ["sun", "night"]
    assert set(second["rows"][-1]["domains"]) == {"sun", "night"}
    assert {"miou", "selector_accuracy", "oracle_miou"} <= set(second["rows"][-1]["domains"]["night"])
    with pytest.raises(ValueError, match="already learned"):
        run_continual(ContinualConfig(domains=("night",), init_checkpoint=second["checkpoint"],
                                      out_dir=str(tmp_path / "c"), train=train_fields), frames, val)


@pytest.mark.slow
def test_deliver_conditions_are_learned_as_domains_by_one_command(tmp_path):
    """`train --continual` on DELIVER's own layout: its conditions are the domains, the
    checkpoint records the DELIVER encodings the node must then produce."""
    from sam_mmseg_ros import cli
    from sam_mmseg_ros.data.deliver import write_deliver_fixture

    root = write_deliver_fixture(tmp_path / "DELIVER", frames_per_condition=2, size=(32, 48), splits=("train", "val"),
                                 conditions=("night", "sun"), class_ids=range(1, 7))
    out = tmp_path / "run"
    assert cli.main(["train", "--continual", "night,sun", "--dataset", "deliver", "--data-root", str(root),
                     "--model", "tiny", "--img-size", "32", "--steps", "1", "--batch-size", "2", "--buffer-size", "2",
                     "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    model, extra = load_checkpoint(out / "model.pt")
    assert model.config.domains == ("night", "sun") and set(extra["replay"]) == {"night", "sun"}
    assert extra["encodings"]["lidar"] != "native" and extra["replay"]["sun"].shape == (2, 3, 32, 32)
    assert [row["after"] for row in extra["continual"]["rows"]] == ["night", "sun"]
