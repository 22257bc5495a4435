"""One entry point for the five SQAs of UniG Table 1 and the ``--suite query`` evaluation hook.

``run_query_attack`` runs one attack through a fresh :class:`QueryOracle` (and checks afterwards that no
sample went over budget); ``run_query_suite`` runs Square, SimBA-DCT, SignHunter, NES and Bandits at the
largest budget and reports robust accuracy at every requested budget from the same run, plus clean
accuracy and accuracy-vs-queries curves — the dictionary ``shieldkit evaluate --suite query`` can embed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from shieldkit.attacks.query.bandits import Bandits
from shieldkit.attacks.query.base import QueryAttack, QueryResult
from shieldkit.attacks.query.nes import NES
from shieldkit.attacks.query.oracle import QueryBudgetExceeded, QueryOracle
from shieldkit.attacks.query.signhunter import SignHunter
from shieldkit.attacks.query.simba import SimBA
from shieldkit.attacks.query.square import SquareAttack
from shieldkit.data.base import ImageDataset, validate_images
from shieldkit.utils.seed import derive_seed, make_generator

ATTACKS: dict[str, type[QueryAttack] | tuple] = {
    "square": SquareAttack,
    "simba_dct": (SimBA, {"basis": "dct"}),
    "simba_pixel": (SimBA, {"basis": "pixel"}),
    "signhunter": SignHunter,
    "nes": NES,
    "bandits": Bandits,
}
TABLE1_ATTACKS = ("square", "simba_dct", "signhunter", "nes", "bandits")  # UniG Table 1 columns


def make_attack(name: str, eps: float, norm: str = "linf", targeted: bool = False, **kwargs) -> QueryAttack:
    """Build a registered attack; ``kwargs`` override its hyperparameters (e.g. ``p_init``, ``lr``)."""
    if name not in ATTACKS:
        raise KeyError(f"unknown query attack {name!r}; available: {', '.join(ATTACKS)}")
    entry = ATTACKS[name]
    cls, fixed = entry if isinstance(entry, tuple) else (entry, {})
    return cls(eps, norm=norm, targeted=targeted, **{**fixed, **kwargs})


def random_targets(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A uniformly random wrong class per sample (seeded)."""
    g = make_generator(derive_seed(seed, "targets"))
    shift = torch.randint(1, num_classes, y.shape, generator=g)
    return (y.cpu() + shift) % num_classes


def run_query_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: QueryAttack | str, *,
                     budget: int, eps: float | None = None, norm: str = "linf", targeted: bool = False,
                     target: torch.Tensor | None = None, seed: int = 0, num_classes: int | None = None,
                     chunk_size: int | None = None) -> QueryResult:
    """Attack ``model`` on ``(x, y)`` with at most ``budget`` queries per sample (clean query included)."""
    validate_images(x, "query attack inputs")
    if isinstance(attack, str):
        if eps is None:
            raise ValueError("give eps when naming the attack")
        attack = make_attack(attack, eps, norm, targeted)
    if attack.targeted and target is None:
        if num_classes is None:
            raise ValueError("a targeted attack needs `target` or `num_classes` to draw targets")
        target = random_targets(y, num_classes, seed).to(y.device)
    was_training = model.training
    model.eval()
    try:
        oracle = QueryOracle(model, x.shape[0], budget, chunk_size=chunk_size)
        t0 = time.perf_counter()
        gen = make_generator(derive_seed(seed, attack.name))
        res = attack.run(oracle, x, y, target=target, generator=gen)
        res.meta["seconds"] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    if int(res.queries.max()) > budget:  # the oracle raises first; this guards the bookkeeping itself
        raise QueryBudgetExceeded(f"{attack.name} spent {int(res.queries.max())} > {budget} queries")
    res.meta["mean_queries"] = float(res.queries.float().mean())
    return res


def run_query_suite(model: nn.Module, dataset: ImageDataset, *, budgets: Sequence[int] = (100, 2500),
                    eps: float, norm: str = "linf", n: int = 100, seed: int = 0,
                    attacks: Sequence[str] = TABLE1_ATTACKS, targeted: bool = False,
                    device: str | torch.device = "cpu", attack_kwargs: dict[str, dict] | None = None,
                    reseed_model: bool = True) -> dict:
    """Robust accuracy of ``model`` under the five SQAs at each budget, on a fixed seeded subset.

    Returns ``{"n", "eps", "norm", "budgets", "clean_accuracy", "attacks": {name: {"robust_accuracy":
    {budget: acc}, "curve": {q: acc}, "mean_queries", "seconds"}}, "worst_case": {budget: acc}}``.
    ``worst_case`` counts a point robust only if it survived every attack (per-point minimum).
    Randomised defences with a ``reseed(seed)`` method are reseeded per attack for reproducibility.
    """
    if not budgets:
        raise ValueError("give at least one budget")
    budgets = sorted(int(b) for b in budgets)
    sub = dataset.subset(n, seed=seed)
    x, y = sub.x.to(device), sub.y.to(device)
    out: dict = {"n": len(sub), "eps": eps, "norm": norm, "budgets": budgets, "targeted": targeted,
                 "seed": seed, "attacks": {}}
    robust_all = {b: torch.ones(len(sub), dtype=torch.bool) for b in budgets}
    clean = []
    for name in attacks:
        if reseed_model and hasattr(model, "reseed"):
            model.reseed(derive_seed(seed, "defence", name))
        atk = make_attack(name, eps, norm, targeted, **(attack_kwargs or {}).get(name, {}))
        res = run_query_attack(model, x, y, atk, budget=budgets[-1], seed=seed, targeted=targeted,
                               num_classes=dataset.num_classes)
        clean.append(float(res.clean_correct.float().mean()))
        for b in budgets:
            robust_all[b] &= res.clean_correct & ~(res.success_at <= b)
        out["attacks"][name] = {"robust_accuracy": {b: res.robust_accuracy(b) for b in budgets},
                                "curve": res.curve(), "mean_queries": res.meta["mean_queries"],
                                "seconds": res.meta["seconds"]}
    out["clean_accuracy"] = sum(clean) / len(clean) if clean else float("nan")
    out["worst_case"] = {b: float(robust_all[b].float().mean()) for b in budgets}
    out["per_point_robust"] = robust_all[budgets[-1]].int().tolist()  # worst case at the largest budget
    return out
