"""The evaluation suites' fixed budgets (:class:`SuiteSpec`): recorded with every result, as AutoAttack
fixes its own, so numbers of two evaluations at the same suite are comparable. What each suite runs is
tabled in :mod:`shieldkit.evaluation.suite`; the attack registry's ``quick`` / ``standard`` / ``full``
budgets mirror these (:mod:`shieldkit.attacks.registry`)."""

from __future__ import annotations

from dataclasses import dataclass

SUITES = ("quick", "standard", "full")


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_long_steps: int = 0  # one extra long PGD run (full: 1000)
    cw_steps: int = 20
    cw_l2: bool = False  # torchattacks CW-ℓ2 (only under the ℓ2 threat model)
    aa_attacks: tuple[str, ...] | None = ("apgd-ce", "apgd-t")  # None = the whole version
    aa_rand: str = "auto"  # AutoAttack 'rand': 'auto' (if randomness is detected) | 'always' | 'never'
    square_queries: int = 0
    square_official: bool = False  # pyautoattack's Square (5000 queries) instead of torchattacks'
    spsa_iters: int = 0
    spsa_samples: int = 128
    hopskipjump: bool = False
    hsj_iter: int = 10
    hsj_eval: int = 500
    transfer_epochs: int = 0
    latent: bool = False
    eps_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    eps_curve_steps: int = 10
    iter_curve: tuple[int, ...] = (1, 5, 20)
    unbounded_steps: int = 50


SUITE_SPECS: dict[str, SuiteSpec] = {
    "quick": SuiteSpec("quick"),
    "standard": SuiteSpec(
        "standard",
        pgd_steps=50,
        pgd_restarts=3,
        cw_steps=50,
        cw_l2=True,
        aa_attacks=None,
        square_queries=1000,
        spsa_iters=10,
        spsa_samples=64,
        transfer_epochs=2,
        latent=True,
        eps_factors=(0.25, 0.5, 1.0, 1.5, 2.0),
        eps_curve_steps=20,
        iter_curve=(1, 2, 5, 10, 20, 50, 100),
        unbounded_steps=100,
    ),
    "full": SuiteSpec(
        "full",
        pgd_steps=100,
        pgd_restarts=5,
        pgd_long_steps=1000,
        cw_steps=100,
        cw_l2=True,
        aa_attacks=None,
        aa_rand="always",
        square_queries=5000,
        square_official=True,
        spsa_iters=50,
        hopskipjump=True,
        hsj_iter=20,
        hsj_eval=1000,
        transfer_epochs=3,
        latent=True,
        eps_factors=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
        eps_curve_steps=50,
        iter_curve=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        unbounded_steps=200,
    ),
}


__all__ = ["SUITES", "SUITE_SPECS", "SuiteSpec"]
