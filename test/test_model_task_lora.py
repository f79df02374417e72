"""Task-aware low-rank tensor adapters (TA-LoRA) and the depth task: tensor shapes, the batched
update against a loop over (frame, task, modality), the shared/specific split, the config axis."""

import pytest
import torch

from sam_mmseg_ros.model import MODEL_CONFIGS, ModelConfig, build_model
from sam_mmseg_ros.model.depth_head import DEPTH_RANGE_M
from sam_mmseg_ros.model.lora import MoELoRAQKV
from sam_mmseg_ros.model.task_lora import TaskAwareLoRAQKV, add_task_factors

torch.set_num_threads(1)

MICRO = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
             aux_block_indexes=(0, 1), out_chans=32, decoder_heads=2, decoder_mlp_dim=64, lora_rank=2,
             num_classes=5)
MASK = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])


def _randomize(module: torch.nn.Module, std: float = 0.3) -> None:
    """Non-zero experts and task cores (a fresh model's are zero, which would hide every path)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_b_" in f".{name}" or ".lora_core_" in f".{name}":
                p.normal_(0, std)


def _qkv(dim=12, experts=3, tasks=2, rank=4):
    torch.manual_seed(0)
    module = TaskAwareLoRAQKV(dim, experts, tasks, rank=rank, alpha=2.0 * rank)
    _randomize(module)
    return module


def test_tensor_shapes_and_fresh_state():
    module = TaskAwareLoRAQKV(16, num_experts=4, num_tasks=2, rank=8, alpha=8.0)
    assert module.weight.shape == (48, 16) and module.bias.shape == (48,)
    assert module.lora_a_q.shape == module.lora_a_v.shape == (4, 16, 8)
    assert module.lora_b_q.shape == module.lora_b_v.shape == (4, 8, 16)
    assert module.lora_core_q.shape == module.lora_core_v.shape == (2, 8, 8)
    assert module.task_cores().shape == (2, 16, 16)
    assert torch.count_nonzero(module.lora_core_q) == 0  # task-specific part starts at zero
    assert len(module.expert_parameters()) == 6
    x = torch.randn(2 * 2 * 4, 5, 16)  # B=2, T=2, M=4 images of 5 tokens
    assert module(x, 16).shape == (16, 5, 48)
    with pytest.raises(ValueError, match="not B x 2 tasks x 4 modalities"):
        module(torch.randn(12, 5, 16), 12)


def test_batched_update_equals_a_loop_over_frames_tasks_and_modalities():
    module = _qkv()
    b, t, m, n, dim = 2, 2, 3, 5, 12
    x = torch.randn(b * t * m, n, dim)
    batched = module(x, b * t * m)
    eye = torch.eye(4)
    for s in range(b * t * m):
        task, modality = (s // m) % t, s % m
        dq = module.lora_a_q[modality] @ (eye + module.lora_core_q[task]) @ module.lora_b_q[modality]
        dv = module.lora_a_v[modality] @ (eye + module.lora_core_v[task]) @ module.lora_b_v[modality]
        weight = module.weight.T + module.scale * torch.cat([dq, torch.zeros(dim, dim), dv], dim=1)
        torch.testing.assert_close(batched[s], x[s] @ weight + module.bias, rtol=1e-5, atol=1e-5)


def test_a_task_core_changes_only_its_own_tasks_rows():
    module = _qkv()
    x = torch.randn(2 * 2 * 3, 5, 12)
    before = module(x, 12).reshape(2, 2, 3, 5, 36)
    with torch.no_grad():
        module.lora_core_v[1] += 0.5
    after = module(x, 12).reshape(2, 2, 3, 5, 36)
    torch.testing.assert_close(after[:, 0], before[:, 0], rtol=0, atol=0)
    assert not torch.allclose(after[:, 1], before[:, 1])
    assert torch.equal(after[..., :24], before[..., :24])  # a v core leaves q (and k, never adapted) alone


def test_from_experts_keeps_the_experts_and_starts_equal_to_them():
    torch.manual_seed(0)
    experts = MoELoRAQKV(12, num_experts=3, rank=4, alpha=8.0)
    _randomize(experts)
    module = TaskAwareLoRAQKV.from_experts(experts, num_tasks=2)
    for name, value in experts.state_dict().items():
        assert torch.equal(module.state_dict()[name], value), name
    x = torch.randn(2 * 3, 5, 12)
    stacked = torch.cat([x.reshape(2, 1, 3, 5, 12)] * 2, dim=1).reshape(12, 5, 12)
    out = module(stacked, 12).reshape(2, 2, 3, 5, 36)
    ref = experts(x, 6).reshape(2, 3, 5, 36)
    for task in range(2):
        torch.testing.assert_close(out[:, task], ref, rtol=1e-6, atol=1e-6)


def _model(adapters="ta_lora", tasks=("semantic", "depth"), **overrides):
    torch.manual_seed(0)
    model = build_model("tiny", **{**MICRO, **overrides}, adapters=adapters, tasks=tasks).eval()
    _randomize(model)
    return model


def test_multi_task_model_outputs_and_training_outputs():
    model = _model()
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        out = model(images, MASK)
        train = model.forward_logits(images, MASK)
    assert set(out) == {"labels", "confidence", "router_weights", "depth"}
    assert out["depth"].dtype == torch.float32 and out["depth"].shape == (2, 64, 64)
    assert torch.all(out["depth"] >= DEPTH_RANGE_M[0]) and torch.all(out["depth"] <= DEPTH_RANGE_M[1])
    torch.testing.assert_close(out["depth"], train["log_depth"].exp())
    assert train["log_depth"].shape == (2, 64, 64) and train["logits"].shape == (2, 5, 64, 64)
    assert torch.all(out["router_weights"][MASK == 0] == 0)
    assert set(build_model("tiny", **MICRO).eval()(images, MASK)) == {"labels", "confidence", "router_weights"}


def test_a_task_specific_core_changes_only_its_tasks_output():
    model = _model()
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        before = model.forward_logits(images, MASK)
        for block in model.image_encoder.blocks:
            block.attn.qkv.lora_core_q[1] += 0.3  # the depth task's core
        depth_changed = model.forward_logits(images, MASK)
        for block in model.image_encoder.blocks:
            block.attn.qkv.lora_core_v[0] += 0.3  # the semantic task's core
        semantic_changed = model.forward_logits(images, MASK)
    for key in ("logits", "aux_logits", "router_weights"):
        assert torch.equal(depth_changed[key], before[key]), key
        assert not torch.allclose(semantic_changed[key], depth_changed[key]), key
    assert not torch.allclose(depth_changed["log_depth"], before["log_depth"])
    assert torch.equal(semantic_changed["log_depth"], depth_changed["log_depth"])


def test_shared_expert_factors_change_every_task():
    model = _model()
    images = torch.randn(1, 4, 3, 64, 64)
    mask = torch.ones(1, 4)
    with torch.no_grad():
        before = model.forward_logits(images, mask)
        model.image_encoder.blocks[0].attn.qkv.lora_b_v[0] += 0.3  # RGB expert, shared by the tasks
        after = model.forward_logits(images, mask)
    assert not torch.allclose(after["logits"], before["logits"])
    assert not torch.allclose(after["log_depth"], before["log_depth"])


def test_task_paths_are_batched_not_looped():
    """One encoder call on B*T*M images: the tasks ride in the batch, like the modalities."""
    model = _model()
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    with torch.no_grad():
        model(torch.randn(2, 4, 3, 64, 64), MASK)
    handle.remove()
    assert calls == [2 * 2 * 4]


def test_shared_path_model_runs_the_encoder_once_per_modality():
    model = _model(adapters="experts")
    assert model.task_paths == 1
    assert not any(isinstance(m, TaskAwareLoRAQKV) for m in model.modules())
    with torch.no_grad():
        out = model(torch.randn(2, 4, 3, 64, 64), MASK)
    assert out["depth"].shape == (2, 64, 64)


def test_frozen_weights_stay_frozen_and_task_cores_train():
    model = _model()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.startswith(("router.", "decoder.", "aux_head.", "depth_decoder.")) or ".lora_" in name
               for name in trainable)
    assert {"image_encoder.blocks.0.attn.qkv.lora_core_q", "depth_decoder.log_depth_offset"} <= trainable
    assert "image_encoder.blocks.0.attn.qkv.weight" not in trainable


def test_adapters_and_tasks_are_a_config_axis():
    config = MODEL_CONFIGS["tiny_talora"]
    assert (config.adapters, config.tasks) == ("ta_lora", ("semantic", "depth"))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["tasks"] == ["semantic", "depth"]
    assert MODEL_CONFIGS["tiny"].tasks == ("semantic",) and MODEL_CONFIGS["tiny"].adapters == "experts"
    for bad in ({"adapters": "prefix"}, {"tasks": ("depth",)}, {"tasks": ("semantic", "normals")},
                {"tasks": ("semantic", "depth", "depth")}):
        with pytest.raises(ValueError, match="adapters must be|tasks must"):
            MODEL_CONFIGS["tiny"].with_overrides(**bad)


def test_add_task_factors_needs_moe_lora_projections():
    with pytest.raises(ValueError, match="no MoE-LoRA projections"):
        add_task_factors(torch.nn.Sequential(torch.nn.Linear(3, 3)), 2)


def test_multi_task_checkpoint_round_trip(tmp_path):
    from sam_mmseg_ros.model import load_checkpoint, save_checkpoint

    model = _model()
    path = save_checkpoint(tmp_path / "mt.pt", model, trained=True)
    loaded, extra = load_checkpoint(path)
    assert loaded.config == model.config and extra["trained"] is True
    images = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        a, b = model(images, torch.ones(1, 4)), loaded(images, torch.ones(1, 4))
    for key in a:
        assert torch.equal(a[key], b[key]), key
