"""StAdv — spatially transformed adversarial examples (Xiao et al., ICLR 2018).

Instead of adding a perturbation, StAdv moves pixels: a per-pixel flow field ``f = (Δu, Δv)`` (in
pixels) resamples the image bilinearly, ``x_adv(p) = Σ_q x(q) · max(0, 1−|u_p+Δu_p−u_q|) ·
max(0, 1−|v_p+Δv_p−v_q|)`` (Xiao et al. Eq 1, here ``torch.nn.functional.grid_sample``), and

    f* = argmin_f  L_adv(x, f) + τ · L_flow(f)                                         (Xiao Eq 2)

    L_flow(f) = Σ_p Σ_{q ∈ N(p)} sqrt(‖Δu_p − Δu_q‖² + ‖Δv_p − Δv_q‖² + 1e-8)        (Xiao Eq 4)

over the 4-neighbourhood ``N(p)``, and ``L_adv`` the C&W margin ``max(Z_y − max_{i≠y} Z_i, −κ)``
(untargeted; Xiao Eq 3 is the targeted form). Xiao et al. optimise with L-BFGS and τ = 0.05;
``optimizer="lbfgs"`` does that, ``"adam"`` (default) is the batch-friendly alternative.

Bounded threat model. AToP Table 6 follows Laidlaw et al. (2021), who bound the flow instead of
(only) penalising it. With ``bound`` set, ``f = bound · tanh(w)`` so every displacement component is
at most ``bound`` pixels (Laidlaw's ε = 0.05 is in grid units where the image spans [−1, 1], i.e.
``0.05 · (W − 1) / 2`` pixels). Returned examples are the successful iterate with the smallest flow
loss per point (the clean image where no iterate succeeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.losses import margin_loss


@dataclass
class StAdvConfig:
    steps: int = 100
    tau: float = 0.05           # weight of L_flow (Xiao et al.)
    kappa: float = 0.0          # confidence of the margin loss
    lr: float = 0.01            # Adam step (in the flow's parametrisation)
    bound: float | None = None  # max |Δu|, |Δv| in pixels (Laidlaw-style); None = unbounded (Xiao)
    optimizer: str = "adam"     # "adam" | "lbfgs"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        if self.steps < 1 or self.tau < 0:
            raise ValueError("steps must be ≥ 1 and tau ≥ 0")
        if self.bound is not None and self.bound <= 0:
            raise ValueError("bound must be positive (or None)")


def flow_loss(flow: torch.Tensor) -> torch.Tensor:
    """Per-sample L_flow (Xiao Eq 4) of a flow (N, 2, H, W): total variation of the displacement over
    the 4-neighbourhood (each unordered neighbour pair counted in both directions, as Eq 4 sums over
    every p and every q ∈ N(p)); zero padding at the border is not used (border pixels have fewer
    neighbours)."""
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be N×2×H×W, got {tuple(flow.shape)}")
    dh = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    dw = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    lh = (dh.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1)
    lw = (dw.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1)
    return 2.0 * (lh + lw)


def apply_flow(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinearly resample ``x`` (N, C, H, W) at ``p + flow(p)`` (flow in pixels; channel 0 = Δu along
    the width, channel 1 = Δv along the height); out-of-image samples use the border value."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def stadv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: StAdvConfig | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted StAdv against ``model`` ([0, 1] images → logits); returns the adversarial images."""
    cfg = cfg or StAdvConfig()
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected x N×C×H×W with one label per image, got {tuple(x.shape)} and {len(y)} labels")
    x = x.detach()
    n, _, h, w = x.shape
    init = torch.zeros((n, 2, h, w), device=x.device, dtype=x.dtype)
    if generator is not None:  # tiny random start breaks the symmetry of sqrt at zero flow
        init = 1e-3 * torch.randn(init.shape, generator=generator, device=generator.device).to(x)
    param = init.clone().requires_grad_(True)

    def to_flow(p: torch.Tensor) -> torch.Tensor:
        return cfg.bound * torch.tanh(p) if cfg.bound is not None else p

    best_x = x.clone()
    best_flow = torch.full((n,), float("inf"), device=x.device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        flow = to_flow(param)
        x_adv = apply_flow(x, flow)
        logits = model(x_adv)
        adv = (-margin_loss(logits, y)).clamp_min(-cfg.kappa)  # Z_y − max_{i≠y} Z_i, floored at −κ
        lf = flow_loss(flow)
        return (adv + cfg.tau * lf).sum(), x_adv.detach(), logits.detach(), lf.detach()

    def track(x_adv: torch.Tensor, logits: torch.Tensor, lf: torch.Tensor) -> None:
        ok = (logits.argmax(1) != y) & (lf < best_flow)
        best_x[ok] = x_adv[ok]
        best_flow[ok] = lf[ok]

    try:
        with torch.enable_grad():
            if cfg.optimizer == "adam":
                opt = torch.optim.Adam([param], lr=cfg.lr)
                for _ in range(cfg.steps):
                    loss, x_adv, logits, lf = objective()
                    track(x_adv, logits, lf)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            else:
                opt = torch.optim.LBFGS([param], lr=1.0, max_iter=cfg.steps, line_search_fn="strong_wolfe")

                def closure() -> torch.Tensor:
                    opt.zero_grad(set_to_none=True)
                    loss, x_adv, logits, lf = objective()
                    track(x_adv, logits, lf)
                    loss.backward()
                    return loss

                opt.step(closure)
            with torch.no_grad():
                _, x_adv, logits, lf = objective()
                track(x_adv, logits, lf)
    finally:
        for p in params:
            p.requires_grad_(True)
    return best_x
