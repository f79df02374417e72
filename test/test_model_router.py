"""Router weights and modality fusion."""

import warnings

import numpy as np
import pytest
import torch

from sam_mmseg_ros.model.fusion import ModalityFusion
from sam_mmseg_ros.model.router import ModalityRouter, reported_weights

MASKS = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])


def _router(top_k=None):
    torch.manual_seed(0)
    router = ModalityRouter(embed_dim=16, num_modalities=4, top_k=top_k)
    with torch.no_grad():
        router.gate.weight.normal_(0, 2.0)  # spread the scores so the weights differ
    return router


def _features(batch=4):
    return torch.randn(batch, 4, 16, 3, 5)


def test_weights_sum_to_one_over_present_and_are_zero_for_absent():
    weights = _router()(_features(), MASKS)
    assert weights.shape == (4, 4)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4), atol=1e-6)
    assert torch.all(weights[MASKS == 0] == 0)
    assert torch.all(weights[MASKS == 1] > 0)
    assert torch.equal(weights[2], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_weights_follow_the_sigmoid_gate_softmax():
    router = _router()
    features = _features()
    weights = router(features, torch.ones(4, 4))
    scores = torch.sigmoid(router.gate(features.mean(dim=(3, 4))).squeeze(-1))
    assert torch.allclose(weights, torch.softmax(scores, dim=1), atol=1e-6)


def test_absent_modality_content_does_not_change_the_weights():
    router = _router()
    features = _features()
    noisy = features.clone()
    noisy[MASKS == 0] = 1e3
    assert torch.equal(router(features, MASKS), router(noisy, MASKS))


def test_top_k_keeps_the_k_largest_and_renormalizes():
    features = _features()
    dense = _router()(features, MASKS)
    sparse = _router(top_k=2)(features, MASKS)
    assert torch.allclose(sparse.sum(dim=1), torch.ones(4), atol=1e-6)
    assert torch.all((sparse > 0).sum(dim=1) == torch.clamp(MASKS.sum(dim=1), max=2))
    assert torch.all(sparse[MASKS == 0] == 0)
    top2 = dense[0].topk(2).indices
    assert torch.allclose(sparse[0, top2], dense[0, top2] / dense[0, top2].sum(), atol=1e-6)


def test_all_absent_raises_in_eager_mode():
    mask = MASKS.clone()
    mask[1] = 0
    with pytest.raises(ValueError, match="every modality is absent"):
        _router()(_features(), mask)


def test_all_absent_in_a_traced_graph_gives_zero_weights_not_nan():
    # jit.trace takes 0.3 s where torch.export (what the ONNX exporter uses) takes ~8 s here;
    # both skip the eager check the same way (model.image_encoder.capturing_graph).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jit.trace is deprecated, still apt here
        traced = torch.jit.trace(_router(), (_features(1), torch.ones(1, 4)))
    weights = traced(_features(1), torch.zeros(1, 4))
    assert torch.equal(weights, torch.zeros(1, 4))


def test_fusion_is_weighted_sum_plus_mean_of_present_and_ignores_absent():
    features = torch.randn(4, 4, 8, 2, 2)
    weights = _router()(_features(), MASKS)
    fused = ModalityFusion()(features, weights, MASKS)
    for b in range(4):
        present = MASKS[b] == 1
        expected = (weights[b, :, None, None, None] * features[b]).sum(0) + features[b][present].mean(0)
        assert torch.allclose(fused[b], expected, atol=1e-5)
    garbage = features.clone()
    garbage[MASKS == 0] = 1e6  # an absent slot's content must never reach the output
    assert torch.equal(ModalityFusion()(garbage, weights, MASKS), fused)


def _unbounded(kind, top_k=None):
    torch.manual_seed(0)
    router = ModalityRouter(embed_dim=16, num_modalities=4, top_k=top_k, kind=kind)
    with torch.no_grad():
        router.gate.weight.normal_(0, 2.0)
    return router


@torch.no_grad()
def test_softmax_router_can_turn_a_modality_down_beyond_the_sigmoid_cap():
    # A sigmoid score is in (0, 1): no weight exceeds another by more than e. Unbounded logits can.
    features = _features()
    bounded = _router()(features, torch.ones(4, 4)).detach()
    assert float((bounded.max(1).values / bounded.min(1).values).max()) <= np.e + 1e-4
    router = _unbounded("softmax")
    with torch.no_grad():
        router.gate.weight.mul_(0.01)
        router.modality_bias.copy_(torch.tensor([-8.0, 0.0, 0.0, 0.0]))
    weights = router(features, torch.ones(4, 4))
    assert float(weights[:, 0].max()) < 1e-3
    assert torch.allclose(weights.sum(1), torch.ones(4), atol=1e-6)
    # A lower temperature sharpens the same logits.
    ones = torch.ones(4, 4)
    logits = router.scores(features, ones)
    with torch.no_grad():
        router.log_temperature.fill_(np.log(0.5))
    assert torch.allclose(router.scores(features, ones), (2 * logits).clamp(-30, 30), atol=1e-5)


@torch.no_grad()
def test_spatial_router_weighs_each_token_and_reports_the_spatial_mean():
    router = _unbounded("spatial")
    features = _features()
    weights = router(features, MASKS)
    assert weights.shape == (4, 4, 3, 5)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4, 3, 5), atol=1e-6)
    assert torch.all(weights[MASKS == 0] == 0)
    reported = reported_weights(weights)
    assert reported.shape == (4, 4) and torch.allclose(reported.sum(1), torch.ones(4), atol=1e-6)
    # Tokens are routed independently: the weights vary over space.
    assert float(weights[0, 0].std()) > 0.01
    noisy = features.clone()
    noisy[MASKS == 0] = 1e3
    assert torch.equal(router(noisy, MASKS), weights)
    sparse = _unbounded("spatial", top_k=1)(features, MASKS)
    assert torch.all((sparse > 0).sum(dim=1) == 1)


@torch.no_grad()
def test_joint_router_weighs_a_sensor_by_what_every_present_sensor_sees():
    features = _features()
    joint, spatial = _unbounded("spatial_joint"), _unbounded("spatial")
    joint.gate.load_state_dict(spatial.gate.state_dict())
    # Its joint gate starts at zero: the same weights as the per-modality spatial router.
    assert torch.equal(joint(features, MASKS), spatial(features, MASKS))
    with torch.no_grad():
        joint.joint_gate.weight.normal_(0, 1.0)
    weights = joint(features, MASKS)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4, 3, 5), atol=1e-6) and torch.all(weights[MASKS == 0] == 0)
    # Depth's weight moves when only the camera's tokens change (depth's own features do not)...
    washed_out = features.clone()
    washed_out[:, 0] *= 0.1
    assert float((joint(washed_out, MASKS)[0, 1] - weights[0, 1]).abs().max()) > 1e-3
    # ...while an absent slot's content says nothing.
    noisy = features.clone()
    noisy[MASKS == 0] = 1e3
    assert torch.equal(joint(noisy, MASKS), weights)


@torch.no_grad()
def test_fusion_with_per_token_weights_and_without_the_mean_term():
    features = torch.randn(4, 4, 8, 3, 5)
    weights = _unbounded("spatial")(_features(), MASKS)
    fused = ModalityFusion(mean="none")(features, weights, MASKS)
    expected = (weights[:, :, None] * features * MASKS[:, :, None, None, None]).sum(1)
    assert torch.allclose(fused, expected, atol=1e-5)
    channels_last = ModalityFusion(mean="none")(features.permute(0, 1, 3, 4, 2), weights, MASKS, channel_dim=-1)
    assert torch.allclose(channels_last, expected.permute(0, 2, 3, 1), atol=1e-5)
    learned = ModalityFusion(mean="learned")
    with torch.no_grad():
        learned.mean_weight.fill_(0.25)
    mean = (features * MASKS[:, :, None, None, None]).sum(1) / MASKS.sum(1).clamp_min(1)[:, None, None, None]
    assert torch.allclose(learned(features, weights, MASKS), expected + 0.25 * mean, atol=1e-5)


def test_router_and_fusion_are_config_choices_saved_with_the_model(tmp_path):
    from sam_mmseg_ros.model import build_model, load_checkpoint, save_checkpoint

    model = build_model("tiny", img_size=64, depth=2, global_attn_indexes=(1,), aux_block_indexes=(0, 1),
                        router="spatial", fusion_mean="learned")
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config.router == "spatial" and loaded.router.kind == "spatial"
    assert loaded.fusion.mean == "learned"
    images, mask = torch.randn(1, 4, 3, 64, 64), torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    out = loaded.eval()(images * mask[:, :, None, None, None], mask)
    assert out["router_weights"].shape == (1, 4) and float(out["router_weights"][0, 2]) == 0.0
    assert abs(float(out["router_weights"].sum()) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="router"):
        build_model("tiny", router="attention")


def test_per_token_weights_reach_sam2s_finer_levels_resized_and_still_summing_to_one():
    # SAM2's decoder and auxiliary head read stride-4/8 levels: the stride-16 token weights are
    # resized to them bilinearly (a linear map, so each pixel's weights still sum to 1).
    fusion = ModalityFusion("none")
    weights = torch.softmax(torch.randn(2, 3, 4, 4), dim=1)
    mask = torch.ones(2, 3)
    ones = torch.ones(2, 3, 5, 16, 16)
    torch.testing.assert_close(fusion(ones, weights, mask), torch.ones(2, 5, 16, 16))
    marked = torch.zeros(2, 3, 5, 16, 16)
    marked[:, 1] = 1.0  # the fused map is modality 1's weight at each pixel
    upsampled = torch.nn.functional.interpolate(weights, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fusion(marked, weights, mask)[:, 0], upsampled[:, 1])

    from sam_mmseg_ros.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny_hiera", img_size=64, router="spatial", fusion_mean="learned").eval()
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    with torch.no_grad():
        out = model.forward_logits(torch.randn(1, 4, 3, 64, 64), mask)
    assert out["logits"].shape == (1, model.config.num_classes, 64, 64) and "aux_logits" in out
    assert out["router_weights"].shape == (1, 4) and float(out["router_weights"][0, 2]) == 0.0
    assert float(out["router_weights"].sum()) == pytest.approx(1.0, abs=1e-5)


def test_a_stage_may_drop_the_learned_mean_and_keep_everything_else(tmp_path):
    # The shipped preset pretrains with the learned mean term, then trains the experts with the
    # router alone in charge: the stored mean weight is left out, every other tensor is kept.
    from sam_mmseg_ros.model import build_model, save_checkpoint
    from sam_mmseg_ros.model.checkpoint import init_from_checkpoint

    model = build_model("tiny", img_size=64, depth=2, global_attn_indexes=(1,), aux_block_indexes=(0, 1),
                        router="spatial", fusion_mean="learned")
    save_checkpoint(tmp_path / "m.pt", model)
    routed = init_from_checkpoint(tmp_path / "m.pt", fusion_mean="none")
    assert routed.fusion.mean == "none" and not hasattr(routed.fusion, "mean_weight")
    stored = model.state_dict()
    assert set(routed.state_dict()) == set(stored) - {"fusion.mean_weight"}
    assert all(torch.equal(value, stored[key]) for key, value in routed.state_dict().items())
