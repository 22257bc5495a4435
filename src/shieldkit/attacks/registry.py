"""The built-in attacks, each a thin backend adapter behind :class:`~shieldkit.attacks.base.Attack`.

Budgets mirror the evaluation suites (:data:`shieldkit.evaluation.suite.SUITE_SPECS`): ``quick`` /
``standard`` / ``full`` use the suites' step counts, query budgets and restarts; ``smoke`` is a tiny budget
that still breaks an undefended MNIST model (the contract test, ``tests/test_attack_registry.py``).

==============  ==========  =====================================================================
name            family      backend
==============  ==========  =====================================================================
fgsm            white-box   one signed-gradient step of ε (our PGD engine, no random start)
pgd             white-box   :func:`~shieldkit.attacks.eval_pgd.pgd_eval`, ``restarts`` honoured (each
                            restart attacks the points still robust); ``loss`` ce | margin | dfs-a/b/c
cw              white-box   ℓ∞: PGD on the CW margin (best iterate); ℓ2: torchattacks CW, outside-ball
                            examples discarded
apgd-ce         white-box   pyautoattack APGD-CE (official implementation)
apgd-t          white-box   pyautoattack APGD-T
autoattack      white-box   pyautoattack ``standard`` / ``plus`` / ``rand`` version
square          black-box   our Square through the budget-enforcing query oracle
simba           black-box   SimBA-DCT (query oracle)
signhunter      black-box   SignHunter (query oracle)
nes             black-box   NES (query oracle)
bandits         black-box   Bandits-TD (query oracle)
spsa            black-box   torchattacks SPSA (ℓ∞ only)
hopskipjump     black-box   ART HopSkipJump (decision-based), outside-ball examples discarded
transfer        transfer    PGD on a ``substitute`` model, judged on the target
latent          adaptive    latent (feature-matching) attack; the model must expose ``features``
stadv           adaptive    StAdv spatial flow (not a norm-ball attack: ``bounded = False``)
eot-pgd         adaptive    PGD on the EOT average of ``samples`` stochastic passes
bpda-pgd        adaptive    PGD through ``BPDAWrapper(preprocess, classifier, approx)``
==============  ==========  =====================================================================
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.base import Attack, register
from shieldkit.attacks.eval_pgd import pgd_eval
from shieldkit.attacks.losses import dfs_modified_loss, margin_loss
from shieldkit.attacks.pgd import PGDConfig
from shieldkit.errors import InputError

PGD_BUDGETS = {"smoke": {"steps": 10, "restarts": 1}, "default": {"steps": 20, "restarts": 1, "loss": "ce",
                                                                   "alpha": None, "teacher": None},
               "quick": {"steps": 20, "restarts": 1}, "standard": {"steps": 50, "restarts": 3},
               "full": {"steps": 100, "restarts": 5}}


def _robust_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def _pgd_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig, loss: Any,
                  target: torch.Tensor | None, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """``restarts`` runs of :func:`pgd_eval`, each on the points every earlier run left robust (the
    AutoAttack ordering: a broken point stays broken with its first adversarial example)."""
    x_adv = x.clone()
    alive = _robust_mask(model, x, y)
    for _ in range(max(int(restarts), 1)):
        idx = torch.nonzero(alive).flatten()
        if len(idx) == 0:
            break
        xa = pgd_eval(model, x[idx], y[idx], cfg, loss_fn=loss, target=None if target is None else target[idx],
                      generator=generator)
        x_adv[idx] = xa
        alive[idx] = _robust_mask(model, xa, y[idx])
    return x_adv


@register
class FGSM(Attack):
    name, family = "fgsm", "white-box"

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        cfg = PGDConfig(eps=self.eps, norm=self.norm, steps=1, alpha=self.eps, random_start=False)
        return pgd_eval(model, x, y, cfg, generator=generator)


@register
class PGD(Attack):
    """PGD (Madry et al. 2018). ``loss``: ``ce``, ``margin`` (CW) or DataFreeShield Table 21's modified
    attacks ``dfs-a`` / ``dfs-b`` / ``dfs-c`` (KL to the student's / teacher's / both clean outputs; these
    need ``teacher``)."""

    name, family = "pgd", "white-box"
    budgets = PGD_BUDGETS

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        p = self.params
        cfg = PGDConfig(eps=self.eps, norm=self.norm, steps=p["steps"], alpha=p["alpha"])
        loss, target = p["loss"], None
        if loss == "margin":
            loss = margin_loss
        elif isinstance(loss, str) and loss.startswith("dfs-"):
            if p["teacher"] is None:
                raise InputError(f"attack 'pgd' with loss {loss}: needs teacher=<the teacher model>")
            with torch.no_grad():
                s, t = F.softmax(model(x), 1), F.softmax(p["teacher"](x), 1)
            target, loss = torch.cat([s, t], 1), dfs_modified_loss(loss[-1], s.shape[1])
        elif loss != "ce":
            raise InputError(f"attack 'pgd': unknown loss {loss!r}", hint="use ce, margin, dfs-a, dfs-b or dfs-c")
        return _pgd_restarts(model, x, y, cfg, loss, target, p["restarts"], generator)


@register
class CW(Attack):
    name, family = "cw", "white-box"
    budgets = {"smoke": {"steps": 10}, "default": {"steps": 30, "restarts": 1, "c": 1.0, "lr": 0.01},
               "quick": {"steps": 20}, "standard": {"steps": 50}, "full": {"steps": 100}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.cw import cw_l2, cw_linf

        p = self.params
        if self.norm == "linf":
            return cw_linf(model, x, y, eps=self.eps, steps=p["steps"], restarts=p["restarts"], generator=generator)
        _, xa = cw_l2(model, x, y, eps=self.eps, steps=p["steps"], c=p["c"], lr=p["lr"],
                      seed=self.seed_from(generator), device=x.device)
        return xa


class _AutoAttackBackend(Attack):
    """pyautoattack underneath (:func:`~shieldkit.attacks.library.run_autoattack`, identical per point to
    the official ``run_standard_evaluation`` on the same seed)."""

    family = "white-box"
    sub: tuple[str, ...] | None = None
    budgets = {"default": {"version": "standard"}, "smoke": {}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.library import run_autoattack_detailed

        seed = self.seed_from(generator)
        res = run_autoattack_detailed(model, x, y, norm=self.norm, eps=self.eps, version=self.params["version"],
                                      seed=seed, device=x.device, attacks=self.sub, per_attack=self.sub is None)
        return res.x_adv, {"seed": seed, "per_attack": dict(res.per_attack), "attack_time": dict(res.attack_time),
                           "warnings": list(res.warnings)}


@register
class APGDCE(_AutoAttackBackend):
    name, sub = "apgd-ce", ("apgd-ce",)


@register
class APGDT(_AutoAttackBackend):
    name, sub = "apgd-t", ("apgd-t",)


@register
class AutoAttack(_AutoAttackBackend):
    name = "autoattack"


class _QueryBackend(Attack):
    """Score-based query attacks through :class:`~shieldkit.attacks.query.oracle.QueryOracle`, which
    refuses any query over ``queries`` per image."""

    family = "black-box"
    budgets = {"smoke": {"queries": 200}, "default": {"queries": 1000}, "quick": {"queries": 1000},
               "standard": {"queries": 2500}, "full": {"queries": 5000}}
    query_name = ""

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.query.suite import run_query_attack

        res = run_query_attack(model, x, y, self.query_name, budget=int(self.params["queries"]), eps=self.eps,
                               norm=self.norm, seed=self.seed_from(generator))
        return res.x_adv, {"mean_queries": float(res.queries.float().mean())}


for _name, _q in (("square", "square"), ("simba", "simba_dct"), ("signhunter", "signhunter"), ("nes", "nes"),
                  ("bandits", "bandits")):
    register(type(_name.title(), (_QueryBackend,), {"name": _name, "query_name": _q, "__module__": __name__}))


@register
class SPSA(Attack):
    name, family, norms = "spsa", "black-box", ("linf",)
    budgets = {"smoke": {"iters": 5, "samples": 32}, "default": {"iters": 10, "samples": 64, "delta": 0.01},
               "standard": {"iters": 10, "samples": 64}, "full": {"iters": 50, "samples": 128}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.library import run_torchattack

        p = self.params  # lr = 2.5·ε/iters lets the budget reach the ball's boundary (see evaluation.suite)
        _, xa = run_torchattack("SPSA", model, x, y, seed=self.seed_from(generator), device=x.device, eps=self.eps,
                                delta=p["delta"], lr=2.5 * self.eps / p["iters"], nb_iter=p["iters"],
                                nb_sample=p["samples"], max_batch_size=64)
        return xa.clamp(0, 1)


@register
class HopSkipJump(Attack):
    name, family = "hopskipjump", "black-box"
    budgets = {"smoke": {"max_iter": 2, "max_eval": 50}, "default": {"max_iter": 10, "max_eval": 500},
               "full": {"max_iter": 20, "max_eval": 1000}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.library import run_decision_attack

        _, xa = run_decision_attack(model, x, y, norm=self.norm, eps=self.eps, seed=self.seed_from(generator),
                                    max_iter=self.params["max_iter"], max_eval=self.params["max_eval"],
                                    device=x.device)
        return xa


@register
class Transfer(Attack):
    """PGD on ``substitute`` (a model the attacker trained or stole); the examples are judged on the target."""

    name, family = "transfer", "transfer"
    budgets = {"smoke": {"steps": 10}, "default": {"steps": 20}}

    @classmethod
    def extra_params(cls) -> tuple[str, ...]:
        return ("substitute",)

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        sub = self.params.get("substitute")
        if sub is None:
            raise InputError("attack 'transfer': needs substitute=<a surrogate model>")
        cfg = PGDConfig(eps=self.eps, norm=self.norm, steps=self.params["steps"])
        return pgd_eval(sub.eval(), x, y, cfg, generator=generator, early_stop=False)


@register
class Latent(Attack):
    name, family = "latent", "adaptive"
    budgets = {"smoke": {"steps": 10}, "default": {"steps": 50}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.latent import latent_attack

        cfg = PGDConfig(eps=self.eps, norm=self.norm, steps=self.params["steps"])
        return latent_attack(model, x, y, cfg, seed=self.seed_from(generator), generator=generator)


@register
class StAdv(Attack):
    name, family, bounded = "stadv", "adaptive", False
    # τ = 5e-4, lr 0.1, flow bounded to 2 px: Xiao's τ = 0.05 was tuned for L-BFGS; with Adam it holds the flow
    # at zero (measured on an undefended MNIST CNN, 16 points: 87.5 % left after 100 steps, 0 % after 30 with these)
    budgets = {"smoke": {"steps": 30}, "default": {"steps": 100, "tau": 5e-4, "lr": 0.1, "bound": 2.0}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.stadv import StAdvConfig, stadv

        fields = StAdvConfig.__dataclass_fields__
        kw = {k: v for k, v in self.params.items() if k in fields}
        return stadv(model, x, y, StAdvConfig(**kw), generator=generator)


@register
class EOTPGD(Attack):
    """PGD on E_t[f(t(x))] estimated by ``samples`` passes (Athalye et al. 2018) for randomised defences."""

    name, family = "eot-pgd", "adaptive"
    budgets = {"smoke": {"steps": 10, "samples": 2}, "default": {"steps": 20, "samples": 8, "restarts": 1}}

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.adaptive import EOT

        cfg = PGDConfig(eps=self.eps, norm=self.norm, steps=self.params["steps"])
        return _pgd_restarts(EOT(model, self.params["samples"]), x, y, cfg, "ce", None, self.params["restarts"],
                             generator)


@register
class BPDAPGD(Attack):
    """PGD through the defended pipeline with the non-differentiable ``preprocess`` replaced on the
    backward pass by ``approx`` (identity when None) — Athalye et al. 2018's BPDA. ``preprocess`` and
    ``classifier`` default to the model's ``transform`` / ``model`` (``InputTransformDefense``)."""

    name, family = "bpda-pgd", "adaptive"
    budgets = {"smoke": {"steps": 10}, "default": {"steps": 50, "restarts": 1, "samples": 1}}

    @classmethod
    def extra_params(cls) -> tuple[str, ...]:
        return ("preprocess", "classifier", "approx")

    def perturb(self, model, x, y, generator):  # noqa: ANN001, ANN201
        from shieldkit.attacks.adaptive import EOT, BPDAWrapper

        inner = getattr(model, "model", model)  # CountingModel → the defended pipeline
        pre = self.params.get("preprocess") or getattr(inner, "transform", None)
        clf = self.params.get("classifier") or getattr(inner, "model", None)
        if pre is None or clf is None:
            raise InputError("attack 'bpda-pgd': needs preprocess=<fn> and classifier=<model> (or a model "
                             "with .transform and .model)")
        system: nn.Module = model.through(BPDAWrapper(pre, clf, self.params.get("approx")))  # counted as the model
        if self.params["samples"] > 1:
            system = EOT(system, self.params["samples"])
        cfg = PGDConfig(eps=self.eps, norm=self.norm, steps=self.params["steps"])
        return _pgd_restarts(system, x, y, cfg, "ce", None, self.params["restarts"], generator)


__all__ = ["PGD_BUDGETS"]
