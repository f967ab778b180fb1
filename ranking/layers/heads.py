"""Multi-task heads: task grouping (LiRank section 3.6) and MMoE as the comparison baseline."""

from __future__ import annotations

import torch
from torch import nn


def _tower(d_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.SiLU())


class TaskGroupHeads(nn.Module):
    """Tasks in a group share one tower; each task has its own linear head on its group's tower.

    phi_g = SiLU(W_g x + b_g);   logit_t = w_t^T phi_{g(t)} + c_t

    One group with every task is a shared-bottom model; one group per task gives separate towers.
    Args:
        d_in: input width.  groups: task indices per group (a partition of 0..T-1).  width: tower width H.
    Shapes: x (B, d_in) -> logits (B, T), phi (B, T, H) (each task's last-layer input)
    """

    def __init__(self, d_in: int, groups: list[list[int]], width: int):
        super().__init__()
        self.groups = groups
        n_tasks = sum(len(g) for g in groups)
        self.task_group = [0] * n_tasks
        for gi, g in enumerate(groups):
            for t in g:
                self.task_group[t] = gi
        self.towers = nn.ModuleList([_tower(d_in, width) for _ in groups])
        self.heads = nn.ModuleList([nn.Linear(width, 1) for _ in range(n_tasks)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        towers = [tower(x) for tower in self.towers]
        phi = torch.stack([towers[g] for g in self.task_group], dim=1)  # (B, T, H)
        logits = torch.cat([head(phi[:, t]) for t, head in enumerate(self.heads)], dim=1)  # (B, T)
        return logits, phi


class MMoEHeads(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018).

    e_i = SiLU(W_i x);  g_t = softmax(G_t x);  phi_t = SiLU(W_t sum_i g_t,i e_i);  logit_t = w_t^T phi_t
    Args:
        d_in: input width.  n_tasks: T.  n_experts: E.  width: expert and tower width H.
    Shapes: x (B, d_in) -> logits (B, T), phi (B, T, H)
    """

    def __init__(self, d_in: int, n_tasks: int, n_experts: int, width: int):
        super().__init__()
        self.experts = nn.ModuleList([_tower(d_in, width) for _ in range(n_experts)])
        self.gates = nn.Linear(d_in, n_tasks * n_experts)
        self.towers = nn.ModuleList([_tower(width, width) for _ in range(n_tasks)])
        self.heads = nn.ModuleList([nn.Linear(width, 1) for _ in range(n_tasks)])
        self.n_tasks, self.n_experts = n_tasks, n_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        gates = torch.softmax(self.gates(x).view(-1, self.n_tasks, self.n_experts), dim=-1)  # (B, T, E)
        mixed = torch.bmm(gates, experts)  # (B, T, H)
        phi = torch.stack([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)  # (B, T, H)
        logits = torch.cat([head(phi[:, t]) for t, head in enumerate(self.heads)], dim=1)  # (B, T)
        return logits, phi
