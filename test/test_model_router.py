"""Router weights and modality fusion."""

import warnings

import pytest
import torch

from sam_mmseg_ros.model.fusion import ModalityFusion
from sam_mmseg_ros.model.router import ModalityRouter

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
