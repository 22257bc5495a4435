"""PGD for *evaluation*: keep the first misclassifying iterate per point and stop attacking it.

:func:`shieldkit.attacks.pgd.pgd` is the training engine (fixed number of steps on every point,
last or highest-loss iterate). An evaluation wants something slightly different, as AutoAttack's
APGD does: a point counts as broken as soon as *any* iterate is misclassified, and a broken point
needs no further gradient steps. On the 2-CPU machines shieldkit targets this made the standard
suite several times faster on weak models (PGD-100 on an undefended teacher stops after ~5 steps)
without changing any robust point's outcome, because robust points still receive every step.

Same update rule, step size, projection and random start as the training engine (imported from
it, not copied): ℓ∞ x ← Π(x + α·sign ∇), ℓ2 x ← Π(x + α·∇/‖∇‖₂).
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.attacks.pgd import LOSSES, LossFn, PGDConfig, _l2_norm, _random_init, project


def pgd_eval(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PGDConfig,
    loss_fn: LossFn | str = "ce",
    target: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    early_stop: bool = True,
) -> torch.Tensor:
    """Maximise ``loss_fn(model(x'), target)`` (``target`` defaults to the labels ``y``); return, per
    point, the first iterate on which ``model`` predicts ≠ ``y`` (else the last iterate)."""
    lf = LOSSES[loss_fn] if isinstance(loss_fn, str) else loss_fn
    x = x.detach()
    tgt = y if target is None else target
    if cfg.steps == 0 or cfg.eps == 0 or len(x) == 0:
        return x.clone()
    alpha, sign = cfg.step_size(), (-1.0 if targeted else 1.0)
    out = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    x_adv = _random_init(x, cfg, generator)
    active = torch.arange(len(x), device=x.device)
    for step in range(cfg.steps + 1):
        xa = x_adv[active].requires_grad_(step < cfg.steps)
        with torch.enable_grad():
            logits = model(xa)
            hit = logits.detach().argmax(1) != y[active]
            if step < cfg.steps:
                loss = sign * lf(logits, tgt[active])
                (grad,) = torch.autograd.grad(loss.sum(), xa)
        newly = active[hit]
        out[newly] = xa.detach()[hit]
        broken[newly] = True
        if step == cfg.steps:
            break
        xa, grad = xa.detach(), grad
        if early_stop:
            keep = ~hit
            active, xa, grad = active[keep], xa[keep], grad[keep]
            if len(active) == 0:
                break
        d = grad.sign() if cfg.norm == "linf" else grad / _l2_norm(grad)
        x_adv[active] = project(xa + alpha * d, x[active], cfg.eps, cfg.norm)
    rest = ~broken
    out[rest] = x_adv[rest]
    return out
