"""The LEDE agent's Q-network (torch): an MLP trunk over the observation and a factored or flat head.

``"factored"`` (the paper's two-stage choice): a layer head ``Q(s, L)`` (``J`` values) and a length head
``A(s, L, k)`` (``J x K`` values), combined into flat action values
``Q(s, L, k) = Q(s, L) + A(s, L, k) - max_k' A(s, L, k')``, a dueling split per exit layer. Then
``max_k Q(s, L, k) = Q(s, L)`` exactly, so choosing ``L = argmax Q(s, L)`` and then ``k = argmax_k Q(s, L, k)`` is
the argmax of the flat values (`QNetwork.two_stage`; a test holds it), and every flat loss (DQN, CQL) trains it
unchanged.

``"flat"``: one head over the ``J x K`` flattened actions (``j * K + kidx``, `lede_env.wrappers.FlattenAction`'s
encoding); its two-stage choice is the same argmax read in two steps.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["QNetwork", "HEADS"]

HEADS = ("factored", "flat")


class QNetwork(nn.Module):
    """Flat action values ``[B, J*K]`` from observations ``[B, D]`` (module docstring)."""

    def __init__(self, obs_dim: int, J: int, K: int, hidden: Sequence[int] = (256, 256), head: str = "factored"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive sizes, got {list(hidden)}.")
        layers, width = [], int(obs_dim)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.trunk = nn.Sequential(*layers)
        self.J, self.K, self.head = int(J), int(K), head
        if head == "factored":
            self.layer_head = nn.Linear(width, self.J)
            self.length_head = nn.Linear(width, self.J * self.K)
        else:
            self.flat_head = nn.Linear(width, self.J * self.K)

    def _values(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q(s, L) [B, J], Q(s, L, k) [B, J, K])`` in one pass of the trunk."""
        z = self.trunk(obs)
        if self.head == "flat":
            q = self.flat_head(z).view(-1, self.J, self.K)
            return q.max(dim=-1).values, q
        layer = self.layer_head(z)
        adv = self.length_head(z).view(-1, self.J, self.K)
        return layer, layer[:, :, None] + adv - adv.max(dim=-1, keepdim=True).values

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self._values(obs)[1].reshape(-1, self.J * self.K)

    def layer_values(self, obs: torch.Tensor) -> torch.Tensor:
        """``Q(s, L)`` ``[B, J]``: the layer head (factored), or the best length's value per layer (flat)."""
        return self._values(obs)[0]

    def numpy_two_stage(self):
        """`two_stage` as a numpy function of a ``[B, D]`` float32 array, over a copy of the current weights: no torch
        call per decision (a torch call costs tens of microseconds and leaves its thread pool spinning beside the
        model's). Equal to `two_stage` up to float rounding in near-ties (a test holds them equal)."""
        linears = [m for m in self.trunk if isinstance(m, nn.Linear)]
        trunk = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]
        heads = [self.layer_head, self.length_head] if self.head == "factored" else [self.flat_head]
        out = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in heads]
        J, K, factored = self.J, self.K, self.head == "factored"

        def choose(x):
            import numpy as np

            for w, b in trunk:
                x = np.maximum(x @ w + b, 0.0)
            rows = np.arange(x.shape[0])
            if factored:      # Q(s, L, k) - Q(s, L) = A - max A: its argmax over k is A's
                j = (x @ out[0][0] + out[0][1]).argmax(axis=1)
                adv = (x @ out[1][0] + out[1][1]).reshape(-1, J, K)
                return j, adv[rows, j].argmax(axis=1)
            q = (x @ out[0][0] + out[0][1]).reshape(-1, J, K)
            j = q.max(axis=2).argmax(axis=1)
            return j, q[rows, j].argmax(axis=1)

        return choose

    def two_stage(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exit index ``argmax_L Q(s, L)``, then the length index ``argmax_k Q(s, L, k)`` at that exit."""
        layer, q = self._values(obs)
        j = layer.argmax(dim=-1)
        return j, q[torch.arange(q.shape[0]), j].argmax(dim=-1)
