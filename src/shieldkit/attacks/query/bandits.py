"""Bandits-TD (Ilyas, Engstrom & Madry, ICLR 2019, Algorithm 3): gradient estimation with a
time-dependent prior (the previous estimate) and a data-dependent prior (a low-resolution prior tiled
over the image, ``tile`` pixels per tile).

Per step: exploration noise ``u = exploration · N(0, I) / √dim(prior)``; two counted queries at
``x + η q±/‖q±‖₂`` with ``q± = up(prior ± u)``; the bandit gradient ``Δ = (L₊ − L₋)/(η·exploration) · u``;
the prior is updated by exponentiated gradients (ℓ∞; written as a sigmoid of log-odds, which equals the
authors' ``eg_step`` without its overflow) or plain gradient ascent (ℓ2); then the image takes a
projected signed (ℓ∞) / normalised (ℓ2) step along ``up(prior)``, and one counted query at the new
iterate detects success. Loss: cross-entropy, as in the paper. ``image_lr`` is UniG Table 6's
"update step".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shieldkit.attacks.query.base import QueryAttack, Tracker, attack_objective, project, randn


def _l2n(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


class Bandits(QueryAttack):
    name = "bandits"

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, fd_eta: float = 0.1,
                 exploration: float = 1.0, online_lr: float = 100.0, image_lr: float | None = None,
                 tile: int = 4, loss: str = "ce") -> None:
        super().__init__(eps, norm, targeted)
        self.fd_eta, self.exploration, self.online_lr = fd_eta, exploration, online_lr
        self.image_lr = image_lr if image_lr is not None else eps / 10
        if tile < 1 or fd_eta <= 0 or exploration <= 0 or self.image_lr <= 0:
            raise ValueError("Bandits needs tile >= 1 and positive fd_eta, exploration, image_lr")
        self.tile, self.loss = tile, loss

    def _attack(self, tr: Tracker, g: torch.Generator) -> None:
        x = tr.x
        n, c, h, w = x.shape
        ph, pw = math.ceil(h / self.tile), math.ceil(w / self.tile)
        prior = torch.zeros(n, c, ph, pw, device=x.device)
        x_adv = x.clone()

        def up(p: torch.Tensor) -> torch.Tensor:
            return F.interpolate(p, size=(h, w), mode="nearest")

        while True:
            act = tr.active(3)
            if len(act) == 0:
                break
            m = len(act)
            pr = prior[act]
            xa = x_adv[act]
            u = self.exploration * randn((m, c, ph, pw), g, x.device) / math.sqrt(c * ph * pw)
            q1, q2 = up(pr + u), up(pr - u)
            probes = torch.cat([xa + self.fd_eta * q1 / _l2n(q1), xa + self.fd_eta * q2 / _l2n(q2)], 0)
            ids = torch.cat([act, act])
            lp = tr.query(probes, ids, check=False)
            L = attack_objective(lp, tr.label[ids], self.targeted, self.loss)
            est_deriv = (L[:m] - L[m:]) / (self.fd_eta * self.exploration)
            est_grad = est_deriv.view(-1, 1, 1, 1) * u
            if self.norm == "linf":
                r = ((pr + 1) / 2).clamp(1e-6, 1 - 1e-6)
                pr = torch.sigmoid(torch.log(r) - torch.log1p(-r) + 2 * self.online_lr * est_grad) * 2 - 1
                stepv = up(pr).sign()
            else:
                pr = pr + self.online_lr * est_grad
                g_img = up(pr)
                stepv = g_img / _l2n(g_img)
            prior[act] = pr
            x_adv[act] = project(xa + self.image_lr * stepv, x[act], self.eps, self.norm)
            tr.query(x_adv[act], act)
