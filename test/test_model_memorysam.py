"""The SAM2 compositions end to end: MoE-LoRA Hiera (router fusion) and MemorySAM (memory
fusion) follow the engine contract and train only what they should (absent modalities:
test_model_sam.py, for every composition); the semantic prototype memory and its loss."""

import pytest
import torch
from test_model_sam import MASK, _micro

from sam_mmseg_ros.contracts import IGNORE_LABEL
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.model.losses import SegmentationLoss
from sam_mmseg_ros.model.prototypes import SemanticPrototypeMemory

torch.set_num_threads(1)

NAMES = ["tiny_hiera", "tiny_memorysam"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_follows_the_engine_contract(name):
    model = _micro(name)
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        out, logits = model(images, MASK), model.forward_logits(images, MASK)
    assert out["labels"].dtype == torch.int32 and out["labels"].shape == (2, 64, 64)
    assert out["confidence"].shape == (2, 64, 64) and out["router_weights"].shape == (2, 4)
    assert torch.equal(out["labels"], logits["logits"].argmax(dim=1).int())
    assert torch.all(out["router_weights"][MASK == 0] == 0)
    assert torch.allclose(out["router_weights"].sum(dim=1), torch.ones(2))
    if name == "tiny_memorysam":  # each present modality's share of the mean of predictions
        assert torch.allclose(out["router_weights"], MASK / MASK.sum(dim=1, keepdim=True))
        assert "aux_logits" not in logits and logits["prototype_features"].shape == (2, 4, 16, 16)
    else:
        assert logits["aux_logits"].shape == (2, 5, 64, 64) and "prototype_features" not in logits


@pytest.mark.parametrize("name", NAMES)
def test_only_lora_fusion_and_heads_train(name):
    model = _micro(name).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = ("router.", "memory.", "decoder.", "aux_head.")
    assert all(n.startswith(allowed) or ".lora_" in n for n in trainable)
    assert any(".lora_" in n for n in trainable) and not any(n.startswith("image_encoder.neck.") for n in trainable)
    experts = model.image_encoder.trunk.blocks[0].attn.qkv.lora_a_q.shape[0]
    assert experts == (1 if name == "tiny_memorysam" else 4)  # MemorySAM shares one LoRA
    out = model.forward_logits(torch.randn(1, 4, 3, 64, 64), MASK[:1])
    sum(v.float().mean() for k, v in out.items() if k != "router_weights").backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    if name == "tiny_memorysam":  # frames after the first attend to the memory: it learns
        assert model.memory.memory_attention.layers[0].cross_attn_image.k_proj.weight.grad.abs().sum() > 0
        assert model.memory.memory_encoder.mask_downsampler.encoder[0].weight.grad.abs().sum() > 0


def test_prototype_memory_follows_the_paper():
    memory = SemanticPrototypeMemory(num_classes=3, dim=2, momentum=0.2).train()
    features = torch.zeros(1, 2, 2, 2)
    features[0, :, 0, :] = torch.tensor([1.0, 2.0])[:, None]  # top row: class 0
    features[0, :, 1, :] = torch.tensor([3.0, 5.0])[:, None]  # bottom row: class 2 (left), ignored (right)
    label = torch.tensor([[[0, 0], [2, IGNORE_LABEL]]])
    first = memory(features, label)
    assert first.item() == 0.0  # a first sighting initialises the global prototype
    assert memory.seen.tolist() == [True, False, True]
    assert torch.equal(memory.prototypes[0], torch.tensor([1.0, 2.0]))
    assert torch.equal(memory.prototypes[1], torch.zeros(2))  # never seen: untouched
    features[0, :, 0, :] = torch.tensor([2.0, 2.0])[:, None]
    loss = memory(features, label)
    assert loss.item() == pytest.approx(((2.0 - 1.0) ** 2 / 2 + 0.0) / 2)  # MSE, mean over present classes
    assert torch.allclose(memory.prototypes[0], torch.tensor([0.8 * 1 + 0.2 * 2, 2.0]))  # momentum 0.2
    before = memory.prototypes.clone()
    memory.eval()(features, label)
    assert torch.equal(memory.prototypes, before)  # only training updates the memory


def test_loss_adds_the_prototype_term_and_tolerates_no_aux_head():
    model = _micro("tiny_memorysam").train()
    criterion = SegmentationLoss(prototypes=model.prototype_memory, prototype_weight=2.0)
    label = torch.randint(0, 5, (1, 64, 64))
    for _ in range(2):  # the second step compares against the prototypes the first one stored
        parts = criterion(model.forward_logits(torch.randn(1, 4, 3, 64, 64), MASK[:1]), label)
    assert parts["aux"].item() == 0.0 and parts["prototype"].item() > 0
    assert parts["loss"].item() == pytest.approx(parts["main"].item() + 2.0 * parts["prototype"].item(), rel=1e-5)
    parts["loss"].backward()
    assert model.decoder.conv_s0.weight.grad.abs().sum() > 0


def test_sam2_backbone_composes_with_task_aware_adapters_and_the_depth_task():
    model = _micro("tiny_hiera", adapters="ta_lora", tasks=("semantic", "depth"))
    stage_change = model.image_encoder.trunk.blocks[1].attn.qkv  # 24 -> 48 wide, with task cores
    assert stage_change.lora_core_q.shape == (2, 2, 2) and stage_change.lora_b_q.shape == (4, 2, 48)
    with torch.no_grad():
        out = model(torch.randn(2, 4, 3, 64, 64), MASK)
    assert tuple(out) == model.output_names == ("labels", "confidence", "router_weights", "depth")
    assert out["depth"].shape == (2, 64, 64) and bool(torch.all(out["depth"] > 0))
    assert model.with_tasks(("semantic",)).depth_decoder is None
    with pytest.raises(ValueError, match="memory fusion predicts semantic labels only"):
        build_model("tiny_memorysam", tasks=("semantic", "depth"))
