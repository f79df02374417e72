"""Task-aware low-rank tensor adapters (TA-LoRA, arXiv 2403.10971) on the per-modality experts.

TA-LoRA makes one frozen SAM encoder serve several tasks: each block's update is a tensor over
(input dim, output dim, task) held in a low-rank decomposition whose factors are partly shared by
all tasks and partly task-specific. Here the update is indexed by modality as well, because the
model already has one LoRA expert per modality (model/lora.py). For q (and, with its own factors,
v) of every block, modality m and task t:

    delta W[m, t] = A_m (I + C_t) B_m * alpha / rank        A_m [dim, r], C_t [r, r], B_m [r, out]

For one modality, the updates of all tasks form a [dim, out, T] tensor in Tucker form: factor
matrices A_m (input mode) and B_m (output mode) shared by every task, and a core with one r x r
slice per task, I + C_t. The shared part is the modality's expert with the identity core (so the
parameters keep MoELoRAQKV's names and a single-task checkpoint loads as is); the task-specific
part is C_t, zero at init, so every task starts from the experts' features and departs from them
only as far as its own loss asks.

Why Tucker and not CP: CP writes the same tensor as A_m diag(c_t) B_m, so a task could only
re-weight the r rank-one components that all tasks share. A full core slice also lets a task mix
them (use the shared input directions with other output directions), for r*r parameters per task
and projection (64 at rank 8): a rounding error next to the experts, and CP is its diagonal
special case.

Batching: the encoder batch is B*T*M images ordered (b, t, m): every frame's M modality images
once per task. The update is applied to a [B, T, M, N, dim] view with broadcast matmuls (expert
factors broadcast over b and t, task cores over b and m), so there is no Python loop over
modalities or tasks and the exported graph is a few static MatMuls. A further index (issue 15's
per-frame domain adapters) adds another core term of shape [B, 1, 1, 2r, 2r] to the same sum; the
batch layout and these factors stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_mmseg_ros.model.image_encoder import capturing_graph
from sam_mmseg_ros.model.lora import MoELoRAQKV


class TaskAwareLoRAQKV(MoELoRAQKV):
    """`qkv` Linear with per-modality LoRA experts and per-task Tucker cores on q and v.

    Parameters beyond MoELoRAQKV's: `lora_core_q`, `lora_core_v` [T, rank, rank] (zero at init).
    The input holds `num_samples` = B * num_tasks * num_experts images ordered (b, t, m).
    """

    def __init__(self, dim: int, num_experts: int, num_tasks: int, rank: int = 8, alpha: float = 8.0,
                 bias: bool = True, out_dim: int | None = None) -> None:
        if num_experts < 1 or num_tasks < 1:
            raise ValueError("task-aware adapters need at least one expert and one task")
        super().__init__(dim, num_experts=num_experts, rank=rank, alpha=alpha, bias=bias, out_dim=out_dim)
        self.num_tasks = num_tasks
        self.lora_core_q = nn.Parameter(torch.zeros(num_tasks, rank, rank))
        self.lora_core_v = nn.Parameter(torch.zeros(num_tasks, rank, rank))

    @classmethod
    def from_experts(cls, experts: MoELoRAQKV, num_tasks: int) -> TaskAwareLoRAQKV:
        """The same projection and experts (values copied) with `num_tasks` zero task cores."""
        rank = experts.lora_a_q.shape[-1]
        module = cls(experts.dim, experts.num_experts, num_tasks, rank=rank, alpha=experts.scale * rank,
                     bias=experts.bias is not None, out_dim=experts.out_dim)
        module.load_state_dict(experts.state_dict(), strict=False)
        return module.to(experts.weight.device, experts.weight.dtype)

    def expert_parameters(self) -> list[nn.Parameter]:
        return super().expert_parameters() + [self.lora_core_q, self.lora_core_v]

    def task_cores(self) -> torch.Tensor:
        """[T, 2r, 2r]: block-diagonal (I + C_q, I + C_v) per task, the q and v halves of the
        concatenated expert factors kept apart."""
        t, r, _ = self.lora_core_q.shape
        eye = torch.eye(r, dtype=self.lora_core_q.dtype, device=self.lora_core_q.device)
        zeros = torch.zeros_like(self.lora_core_q)
        return torch.cat([torch.cat([eye + self.lora_core_q, zeros], dim=2),
                          torch.cat([zeros, eye + self.lora_core_v], dim=2)], dim=1)

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """x: [S, ..., dim], the rows of each of the `num_samples` images contiguous (e.g. its
        attention windows), images ordered (b, t, m)."""
        out = nn.functional.linear(x, self.weight, self.bias)
        groups = self.num_tasks * self.num_experts
        if num_samples % groups and not capturing_graph():
            raise ValueError(f"batch of {num_samples} images is not B x {self.num_tasks} tasks x "
                             f"{self.num_experts} modalities")
        grouped = x.reshape(num_samples // groups, self.num_tasks, self.num_experts, -1, self.dim)
        a, b = self.expert_factors()  # [M, dim, 2r], [M, 2r, 3*dim]
        cores = self.task_cores()[:, None]  # [T, 1, 2r, 2r]: broadcast over modalities
        delta = ((grouped @ a) @ cores) @ (b * self.scale)  # [B, T, M, N, 3*dim]
        return out + delta.reshape(out.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tasks={self.num_tasks}"


def add_task_factors(encoder: nn.Module, num_tasks: int) -> int:
    """Give every MoE-LoRA projection of `encoder` task cores for `num_tasks` tasks, in place
    (any backbone whose attention projections are MoELoRAQKV). Returns how many were replaced."""
    replaced = 0
    # Building the replacements draws no numbers from the global generator, so a model's other
    # parts get the same initial weights with either adapters value.
    with torch.random.fork_rng(devices=[]):
        for parent in list(encoder.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is MoELoRAQKV:
                    setattr(parent, name, TaskAwareLoRAQKV.from_experts(child, num_tasks))
                    replaced += 1
    if not replaced:
        raise ValueError(f"{type(encoder).__name__} has no MoE-LoRA projections to make task-aware")
    return replaced
