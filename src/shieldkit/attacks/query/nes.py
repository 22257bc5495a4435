"""NES (Ilyas, Engstrom, Athalye & Lin, ICML 2018, Algorithm 1): natural-evolution-strategies gradient
estimates with antithetic Gaussian sampling, followed by projected signed (ℓ∞) or normalised (ℓ2)
gradient steps.

    ĝ = 1/(2 q σ) Σ_{i=1}^{q} [L(x + σ u_i) − L(x − σ u_i)] u_i ,   u_i ~ N(0, I)

Each step costs ``2q`` queries for the estimate plus one counted query at the new iterate, which is how
success is detected (the estimate's probes lie outside the ε-ball and are never counted as successes).
The loss defaults to cross-entropy, as in the paper. ``lr`` is the "update step" of UniG Table 6.
"""

from __future__ import annotations

import torch

from shieldkit.attacks.query.base import QueryAttack, Tracker, attack_objective, project, randn


class NES(QueryAttack):
    name = "nes"

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, sigma: float | None = None,
                 lr: float | None = None, q: int = 10, loss: str = "ce") -> None:
        super().__init__(eps, norm, targeted)
        self.sigma = sigma if sigma is not None else 0.01
        self.lr = lr if lr is not None else eps / 10
        if q < 1 or self.sigma <= 0 or self.lr <= 0:
            raise ValueError("NES needs q >= 1, sigma > 0 and lr > 0")
        self.q, self.loss = q, loss

    def _attack(self, tr: Tracker, g: torch.Generator) -> None:
        x = tr.x
        x_adv = x.clone()
        per_step = 2 * self.q + 1
        while True:
            act = tr.active(per_step)
            if len(act) == 0:
                break
            m = len(act)
            xa = x_adv[act]
            u = randn((self.q, m, *x.shape[1:]), g, x.device)
            u = torch.cat([u, -u], 0)  # antithetic pairs
            probes = (xa.unsqueeze(0) + self.sigma * u).reshape(-1, *x.shape[1:])
            ids = act.repeat(2 * self.q)
            lp = tr.query(probes, ids, check=False)
            L = attack_objective(lp, tr.label[ids], self.targeted, self.loss).view(2 * self.q, m)
            grad = (L.view(2 * self.q, m, 1, 1, 1) * u).sum(0) / (2 * self.q * self.sigma)
            if self.norm == "linf":
                stepv = grad.sign()
            else:
                stepv = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x_adv[act] = project(xa + self.lr * stepv, x[act], self.eps, self.norm)
            tr.query(x_adv[act], act)
