"""What the score-based query attacks share: losses on scores, the success tracker, projections.

Every attack has one signature, ``attack.run(oracle, x, y, target=None, generator=g) -> QueryResult``
(torchattacks' single call convention, AutoAttack's per-sample bookkeeping): it works only on samples
that are still correctly classified, records for each sample the query count at which a *valid*
adversarial point (inside the ε-ball and [0, 1]) was first answered with a wrong label, and stops
querying that sample. The 100-query and 2,500-query numbers of UniG Table 1 are then both read off one
2,500-query run (robust accuracy after q queries = points not broken within q queries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from shieldkit.attacks.query.oracle import QueryOracle


def margin(logp: torch.Tensor, label: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Square's margin on scores: untargeted ``s_y − max_{j≠y} s_j``; targeted ``max_{j≠t} s_j − s_t``.
    Positive = the attack has not succeeded yet (Eq. 1 of UniG; Square attack.py's margin_loss)."""
    own = logp.gather(1, label.view(-1, 1)).squeeze(1)
    other = logp.scatter(1, label.view(-1, 1), -math.inf).amax(1)
    return other - own if targeted else own - other


def cross_entropy(logp: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return -logp.gather(1, label.view(-1, 1)).squeeze(1)


def attack_objective(logp: torch.Tensor, label: torch.Tensor, targeted: bool, loss: str) -> torch.Tensor:
    """Quantity the gradient-estimation attacks *maximise*: CE (NES, Bandits papers) or the CW/margin
    loss (SignHunter's 'cw'). Targeted attacks maximise −CE(target) / −margin."""
    if loss == "ce":
        ce = cross_entropy(logp, label)
        return -ce if targeted else ce
    if loss == "margin":
        return -margin(logp, label, targeted)
    raise ValueError(f"unknown loss {loss!r}; use 'ce' or 'margin'")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Π onto the ε-ball (ℓ∞ or ℓ2) around ``x`` intersected with [0, 1]."""
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    elif norm == "l2":
        nrm = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (d.ndim - 1)))
        d = d * torch.clamp(eps / nrm, max=1.0)
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return (x + d).clamp(0.0, 1.0)


def in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, tol: float = 1e-5) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    box = (x_adv.flatten(1).amin(1) >= -tol) & (x_adv.flatten(1).amax(1) <= 1 + tol)
    return (size <= eps * (1 + 1e-4) + tol) & box


@dataclass
class QueryResult:
    """Per-sample outcome of one query attack run.

    ``success_at[i]``: the sample's query count when its first valid adversarial answer came back
    (``inf`` if never). ``clean_correct``: whether the clean query was answered correctly.
    """

    x_adv: torch.Tensor
    success_at: torch.Tensor
    clean_correct: torch.Tensor
    queries: torch.Tensor  # queries spent per sample
    budget: int
    meta: dict = field(default_factory=dict)

    def robust_accuracy(self, q: int | None = None) -> float:
        """Fraction of samples correct on the clean query and not broken within ``q`` queries."""
        q = self.budget if q is None else q
        broken = self.success_at <= q
        return float((self.clean_correct & ~broken).float().mean()) if len(broken) else float("nan")

    def curve(self, grid: list[int] | None = None) -> dict[int, float]:
        grid = grid or [1, 10, 25, 50, 100, 200, 500, 1000, 1500, 2000, 2500]
        qs = sorted({q for q in grid if q <= self.budget} | {self.budget})
        return {q: self.robust_accuracy(q) for q in qs}


class Tracker:
    """Success bookkeeping shared by all attacks (who is still to be fooled, when each one fell)."""

    def __init__(self, oracle: QueryOracle, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                 targeted: bool, target: torch.Tensor | None) -> None:
        if targeted and target is None:
            raise ValueError("a targeted attack needs `target` labels")
        self.oracle, self.x, self.y, self.eps, self.norm = oracle, x, y, eps, norm
        self.targeted = targeted
        self.label = target if targeted else y  # the label the attack's loss is written for
        n = x.shape[0]
        self.x_adv = x.clone()
        self.success_at = torch.full((n,), math.inf)
        self.done = torch.zeros(n, dtype=torch.bool)
        self.clean_correct = torch.ones(n, dtype=torch.bool)
        self.clean_logp: torch.Tensor | None = None

    def fooled(self, logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        pred = logp.argmax(1)
        if self.targeted:
            return pred == self.label[idx]
        return pred != self.y[idx]

    def query(self, x_q: torch.Tensor, idx: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Query the oracle; when ``check``, rows are candidate adversarial points: valid ones answered
        with the attacker's goal mark their sample done (and are kept as its adversarial example)."""
        logp = self.oracle(x_q, idx)
        if check:
            self.record(logp, x_q, idx)
        return logp

    def record(self, logp: torch.Tensor, x_q: torch.Tensor, idx: torch.Tensor) -> None:
        ok = self.fooled(logp, idx).cpu() & ~self.done[idx.cpu()]
        if ok.any():
            valid = in_ball(x_q, self.x[idx], self.eps, self.norm).cpu()
            ok &= valid
        if ok.any():
            sel = idx.cpu()[ok]
            self.done[sel] = True
            self.success_at[sel] = self.oracle.counts[sel].float()
            self.x_adv[sel.to(self.x_adv.device)] = x_q[ok.to(x_q.device)].detach()

    def clean_pass(self) -> None:
        """The clean query (one per sample, counted): misclassified points are not robust at q = 1."""
        n = self.x.shape[0]
        idx = torch.arange(n)
        logp = self.oracle(self.x, idx)
        self.clean_logp = logp
        wrong = logp.argmax(1).cpu() != self.y.cpu()
        self.clean_correct = ~wrong
        self.done |= wrong
        self.success_at[wrong] = 1.0

    def active(self, times: int = 1) -> torch.Tensor:
        """Indices still to fool that can afford ``times`` more queries."""
        return torch.nonzero(~self.done & (self.oracle.remaining() >= times)).flatten()

    def result(self, **meta) -> QueryResult:
        return QueryResult(self.x_adv, self.success_at, self.clean_correct, self.oracle.counts.clone(),
                           self.oracle.budget, dict(meta))


class QueryAttack:
    """Base class: subclasses implement :meth:`_attack` on a :class:`Tracker`."""

    name = "query-attack"

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False) -> None:
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps, self.norm, self.targeted = float(eps), norm, targeted

    def run(self, oracle: QueryOracle, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> QueryResult:
        if x.ndim != 4:
            raise ValueError(f"expected images N×C×H×W, got {tuple(x.shape)}")
        if x.shape[0] != oracle.n or y.shape[0] != oracle.n:
            raise ValueError("x, y and the oracle must cover the same samples")
        # random numbers are drawn on the CPU (one stream whatever the device), then moved
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        tr = Tracker(oracle, x.detach(), y, self.eps, self.norm, self.targeted, target)
        tr.clean_pass()
        self._attack(tr, g)
        return tr.result(attack=self.name, eps=self.eps, norm=self.norm, targeted=self.targeted)

    def _attack(self, tr: Tracker, g: torch.Generator) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def rand_sign(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=g).float() * 2 - 1).to(device)


def randn(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=g).to(device)


def randint(high: int, g: torch.Generator) -> int:
    return int(torch.randint(0, max(high, 1), (1,), generator=g))
