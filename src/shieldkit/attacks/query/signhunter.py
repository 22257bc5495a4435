"""SignHunter (Al-Dujaili & O'Reilly, ICLR 2020, Algorithm 1-3): estimate only the *sign* of the gradient.

Start from the all-ones sign vector ``s`` and the vertex ``x + ε s`` of the ℓ∞ ball; at level ``h`` the
coordinates are cut into ``2^h`` contiguous chunks and each chunk's signs are flipped in turn, the flip
kept only if the loss at the new vertex is higher (a single query per flip: the loss at the previous
best vertex is remembered instead of re-queried, as the paper's query count assumes). When the chunks
are single coordinates the hierarchy restarts at h = 0 from the current signs. Every queried point is a
valid ℓ∞ adversarial candidate, so success is detected without extra queries.

For ℓ2 the step is ``ε s / √d`` (the paper's ℓ2 variant); the loss defaults to the margin ('cw') loss.
"""

from __future__ import annotations

import math

import torch

from shieldkit.attacks.query.base import QueryAttack, Tracker, attack_objective


class SignHunter(QueryAttack):
    name = "signhunter"

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, loss: str = "margin") -> None:
        super().__init__(eps, norm, targeted)
        self.loss = loss

    def _vertex(self, x: torch.Tensor, sgn: torch.Tensor) -> torch.Tensor:
        d = x[0].numel()
        step = self.eps if self.norm == "linf" else self.eps / math.sqrt(d)
        return (x + step * sgn.view_as(x)).clamp(0, 1)

    def _attack(self, tr: Tracker, g: torch.Generator) -> None:
        x = tr.x
        n = x.shape[0]
        dim = x[0].numel()
        sgn = torch.ones(n, dim, device=x.device)
        best = torch.full((n,), -math.inf, device=x.device)
        act = tr.active()
        if len(act) == 0:
            return
        lp = tr.query(self._vertex(x[act], sgn[act]), act)
        best[act] = attack_objective(lp, tr.label[act], self.targeted, self.loss)
        h, i = 0, 0
        max_h = math.ceil(math.log2(dim))
        while True:
            act = tr.active()
            if len(act) == 0:
                break
            chunk = math.ceil(dim / 2 ** h)
            lo, hi = i * chunk, min(dim, (i + 1) * chunk)
            cand = sgn[act].clone()
            cand[:, lo:hi] *= -1
            lp = tr.query(self._vertex(x[act], cand), act)
            val = attack_objective(lp, tr.label[act], self.targeted, self.loss)
            keep = val >= best[act]
            sgn[act] = torch.where(keep.view(-1, 1), cand, sgn[act])
            best[act] = torch.where(keep, val, best[act])
            i += 1
            if i == 2 ** h or hi == dim:
                h, i = h + 1, 0
                if h > max_h:
                    h = 0
