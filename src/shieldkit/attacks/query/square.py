"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), ℓ∞ (Alg. 1) and ℓ2 (Alg. 3).

Random search over localised square updates; a candidate is kept only if it lowers the loss (margin
loss untargeted, cross-entropy targeted — the authors' ``attack.py``). The square side follows the
authors' piecewise-constant schedule ``p_selection`` rescaled to the query budget. This is a port of
the authors' reference code to batched torch, behind the counting oracle: torchattacks' / pyautoattack's
Square call the model directly (with uncounted extra forwards for bookkeeping) and so cannot be made to
respect a per-sample, score-only budget. ``tests/test_query_attacks.py`` checks it against
torchattacks' Square on an undefended model.

Deviations: random draws come from an explicit generator; in ℓ∞ the "resample until the window
changes" loop is capped at 20 tries (an all-saturated window otherwise loops forever).
"""

from __future__ import annotations

import math

import torch

from shieldkit.attacks.query.base import QueryAttack, Tracker, margin, rand_sign


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels changed at iteration ``it`` (authors' schedule, defined for 10,000 iterations)."""
    it = int(it / max(n_iters, 1) * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256), (10000, 512)):
        if it <= bound:
            return p_init / div
    return p_init


def _pseudo_gaussian_pert_rectangles(x: int, y: int) -> torch.Tensor:
    delta = torch.zeros(x, y)
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[max(c0, 0):min(c0 + (2 * counter + 1), x), max(0, c1):min(c1 + (2 * counter + 1), y)] += \
            1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    return delta / delta.pow(2).sum().sqrt()


def _meta_pseudo_gaussian_pert(s: int, g: torch.Generator) -> torch.Tensor:
    delta = torch.zeros(s, s)
    delta[:s // 2] = _pseudo_gaussian_pert_rectangles(s // 2, s)
    delta[s // 2:] = -_pseudo_gaussian_pert_rectangles(s - s // 2, s)
    delta = delta / delta.pow(2).sum().sqrt()
    if float(torch.rand(1, generator=g)) > 0.5:
        delta = delta.t()
    return delta


class SquareAttack(QueryAttack):
    """Square Attack. ``p_init``: initial fraction of pixels per square (authors: 0.05 ℓ∞ CIFAR/ImageNet,
    0.1 ℓ2; UniG Table 5 sweeps 0.05-0.3)."""

    name = "square"

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, p_init: float | None = None,
                 loss: str | None = None) -> None:
        super().__init__(eps, norm, targeted)
        self.p_init = p_init if p_init is not None else (0.05 if norm == "linf" else 0.1)
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        self.loss = loss or ("ce" if targeted else "margin")
        if self.loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {self.loss!r}")

    def _losses(self, logp: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, margin) as in the authors' ``model.loss``."""
        marg = margin(logp, label, self.targeted)
        if self.loss == "margin":
            return marg, marg
        own = logp.gather(1, label.view(-1, 1)).squeeze(1)
        return (-own if self.targeted else own), marg

    def _attack(self, tr: Tracker, g: torch.Generator) -> None:
        (self._linf if self.norm == "linf" else self._l2)(tr, g)

    def _init_and_loop(self, tr: Tracker, g: torch.Generator, x_best: torch.Tensor, step) -> None:
        n = tr.x.shape[0]
        dev = tr.x.device
        loss_min = torch.full((n,), math.inf, device=dev)
        margin_min = torch.full((n,), math.inf, device=dev)
        idx = tr.active()
        if len(idx) == 0:
            return
        logp = tr.query(x_best[idx], idx)
        loss_min[idx], margin_min[idx] = self._losses(logp, tr.label[idx])
        n_iters = tr.oracle.budget
        for i_iter in range(n_iters - 1):
            act = tr.active()
            if len(act) == 0:
                break
            x_new = step(tr.x[act], x_best[act], i_iter, n_iters, g)
            logp = tr.query(x_new, act)
            loss, marg = self._losses(logp, tr.label[act])
            improved = loss < loss_min[act]
            loss_min[act] = torch.where(improved, loss, loss_min[act])
            margin_min[act] = torch.where(improved, marg, margin_min[act])
            x_best[act] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best[act])

    # -- ℓ∞ (Algorithm 1) ---------------------------------------------------------------------------
    def _linf(self, tr: Tracker, g: torch.Generator) -> None:
        x, eps = tr.x, self.eps
        n, c, h, w = x.shape
        n_features = c * h * w
        # vertical-stripe initialisation
        x_best = (x + eps * rand_sign((n, c, 1, w), g, x.device)).clamp(0, 1)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)

        def step(xc: torch.Tensor, xb: torch.Tensor, i_iter: int, n_iters: int, g: torch.Generator):
            m = xc.shape[0]
            deltas = xb - xc
            p = p_selection(self.p_init, i_iter, n_iters)
            s = min(max(int(round(math.sqrt(p * n_features / c))), 1), h - 1)
            ch = torch.randint(0, h - s, (m,), generator=g).to(x.device).view(m, 1, 1, 1)
            cw = torch.randint(0, w - s, (m,), generator=g).to(x.device).view(m, 1, 1, 1)
            win = (rows >= ch) & (rows < ch + s) & (cols >= cw) & (cols < cw + s)  # m×1×h×w
            todo = torch.ones(m, dtype=torch.bool, device=x.device)
            for _ in range(20):  # resample a window's signs until it changes the image
                cand = eps * rand_sign((m, c, 1, 1), g, x.device)
                new = torch.where(win & todo.view(m, 1, 1, 1), cand.expand(m, c, h, w), deltas)
                changed = (((xc + new).clamp(0, 1) - xb).abs() >= 1e-7) & win
                deltas = new
                todo = todo & ~changed.flatten(1).any(1)
                if not todo.any():
                    break
            return (xc + deltas).clamp(0, 1)

        self._init_and_loop(tr, g, x_best, step)

    # -- ℓ2 (Algorithm 3) ---------------------------------------------------------------------------
    def _l2(self, tr: Tracker, g: torch.Generator) -> None:
        x, eps = tr.x, self.eps
        n, c, h, w = x.shape
        n_features = c * h * w
        delta_init = torch.zeros_like(x)
        s = max(h // 5, 1)
        sp_init = (h - s * 5) // 2
        center_h = sp_init
        for _ in range(h // s):
            center_w = sp_init
            for _ in range(w // s):
                pert = _meta_pseudo_gaussian_pert(s, g).to(x.device).view(1, 1, s, s)
                delta_init[:, :, center_h:center_h + s, center_w:center_w + s] += \
                    pert * rand_sign((n, c, 1, 1), g, x.device)
                center_w += s
            center_h += s
        nrm = delta_init.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x_best = (x + delta_init / nrm * eps).clamp(0, 1)

        def step(xc: torch.Tensor, xb: torch.Tensor, i_iter: int, n_iters: int, g: torch.Generator):
            m = xc.shape[0]
            delta = xb - xc
            p = p_selection(self.p_init, i_iter, n_iters)
            s = max(int(round(math.sqrt(p * n_features / c))), 3)
            if s % 2 == 0:
                s += 1
            s = min(s, h - 1)
            h1, w1 = torch.randint(0, h - s, (2,), generator=g).tolist()
            h2, w2 = torch.randint(0, h - s, (2,), generator=g).tolist()
            mask1 = torch.zeros_like(xc)
            mask1[:, :, h1:h1 + s, w1:w1 + s] = 1.0
            mask2 = torch.zeros_like(xc)
            mask2[:, :, h2:h2 + s, w2:w2 + s] = 1.0
            curr_norms_window = ((delta * mask1) ** 2).sum((2, 3), keepdim=True).sqrt()
            curr_norms_image = (delta ** 2).sum((1, 2, 3), keepdim=True).sqrt()
            mask_2 = torch.maximum(mask1, mask2)
            norms_windows = ((delta * mask_2) ** 2).sum((2, 3), keepdim=True).sqrt()
            new_deltas = _meta_pseudo_gaussian_pert(s, g).to(x.device).view(1, 1, s, s).repeat(m, c, 1, 1)
            new_deltas = new_deltas * rand_sign((m, c, 1, 1), g, x.device)
            old_deltas = delta[:, :, h1:h1 + s, w1:w1 + s] / (1e-10 + curr_norms_window)
            new_deltas = new_deltas + old_deltas
            new_deltas = new_deltas / (new_deltas ** 2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (
                torch.clamp(eps ** 2 - curr_norms_image ** 2, min=0) / c + norms_windows ** 2).sqrt()
            delta = delta.clone()
            delta[:, :, h2:h2 + s, w2:w2 + s] = 0.0
            delta[:, :, h1:h1 + s, w1:w1 + s] = new_deltas
            nrm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            return (xc + delta / nrm * eps).clamp(0, 1)

        self._init_and_loop(tr, g, x_best, step)
