"""One default threat model per dataset: norm, ε and where the value comes from.

Every command that takes ``--eps`` resolves it through :func:`shieldkit.cli.common.resolve_threat_model`:
an explicit ``--eps`` (or a ``--config`` file's ε) wins; otherwise the dataset named by the model card
(of the model being evaluated / the teacher being shielded; ``--data`` where there is no model) is looked
up here. A dataset/norm pair without an entry falls back to :data:`GENERIC`, and the source printed says
so (``pass --eps`` to choose).

Values (ℓ∞ unless noted; pixels in [0, 1]):

* ``mnist5k``, ``digits``: ℓ∞ 0.1 — shieldkit's own measured choice (README "Results",
  ``pipeline.demo_config``, ``benchmarks/results/dfs_mnist5k.json`` and ``dfs_claims.json``): at 0.2 the
  synthetic set a 66k-parameter teacher yields does not support robust training (the student collapses),
  at 0.1 it does. Neither dataset is in the papers.
* ``cifar10``, ``cifar100``: ℓ∞ 8/255 — the RobustBench standard, used by AToP (§4, Tables 2-4: "AutoAttack
  l∞ (ε = 8/255)" on CIFAR-10 and CIFAR-100) and UniG ("8/255 for CIFAR10"); DataFreeShield reports it
  in Appendix E (Table 15, CIFAR-10). ℓ2 128/255: DataFreeShield §5.1 / Table 5 (≈ RobustBench's 0.5).
* ``svhn``: ℓ∞ 8/255 — DataFreeShield Appendix E, Table 14 (SVHN at ε ∈ {2, 4, 6, 8}/255); ℓ2 128/255
  (§5.1 / Table 5). Note: DataFreeShield's *main* tables (§5.1, Table 4) use ℓ∞ 4/255 for SVHN and CIFAR;
  the paper presets ``configs/paper/*-linf4`` keep that value (a config's ε is explicit and wins).
* MedMNIST-v2 (every registered flag, e.g. ``pathmnist``): ℓ∞ 8/255 — DataFreeShield §5.1 ("For medical
  datasets … l∞, ε = 8/255"), Tables 2-3 and the motivational study §3.2 / Figure 1b.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["GENERIC", "THREAT_MODELS", "ThreatModel", "default_threat_model", "format_eps"]


@dataclass(frozen=True)
class ThreatModel:
    """A threat model: ``norm`` ∈ {"linf", "l2"}, budget ``eps`` (as written, e.g. "8/255") and its source."""

    norm: str
    eps_text: str
    source: str

    @property
    def eps(self) -> float:
        return float(Fraction(self.eps_text))


_MNIST = "shieldkit's measured choice (README 'Results'; at ε = 0.2 data-free training collapses)"
_CIFAR_LINF = "RobustBench standard; AToP §4 Tables 2-4, UniG; DataFreeShield App. E Table 15"
_DFS_L2 = "DataFreeShield §5.1 / Table 5"
_SVHN_LINF = "DataFreeShield App. E Table 14 (its main Table 4 uses 4/255)"
_MED = "DataFreeShield §5.1 (MedMNIST: ℓ∞ 8/255), Tables 2-3"

THREAT_MODELS: dict[str, dict[str, ThreatModel]] = {
    "mnist5k": {"linf": ThreatModel("linf", "1/10", _MNIST)},
    "digits": {"linf": ThreatModel("linf", "1/10", _MNIST)},
    "cifar10": {"linf": ThreatModel("linf", "8/255", _CIFAR_LINF), "l2": ThreatModel("l2", "128/255", _DFS_L2)},
    "cifar100": {"linf": ThreatModel("linf", "8/255", _CIFAR_LINF), "l2": ThreatModel("l2", "128/255", _DFS_L2)},
    "svhn": {"linf": ThreatModel("linf", "8/255", _SVHN_LINF), "l2": ThreatModel("l2", "128/255", _DFS_L2)},
}
"""dataset → norm → threat model; the first norm of an entry is the dataset's default norm."""

GENERIC: dict[str, ThreatModel] = {
    "linf": ThreatModel("linf", "8/255", "no default for this dataset: the common ℓ∞ 8/255 (RobustBench)"),
    "l2": ThreatModel("l2", "1/2", "no default for this dataset: the common ℓ2 0.5 (RobustBench)"),
}
"""Fallback where a dataset (or the norm asked for) has no entry — e.g. ``imagefolder``, or a model card
that names no dataset or one shieldkit has no loader for."""


def _medmnist_flags() -> tuple[str, ...]:
    from shieldkit.data.local import MEDMNIST_CLASSES

    return tuple(MEDMNIST_CLASSES)


def default_threat_model(dataset: str | None, norm: str | None = None) -> ThreatModel | None:
    """The registered threat model of ``dataset`` for ``norm`` (its default norm if None); None if none."""
    if not dataset:
        return None
    entry = THREAT_MODELS.get(dataset)
    if entry is None and dataset in _medmnist_flags():
        entry = {"linf": ThreatModel("linf", "8/255", _MED)}
    if entry is None:
        return None
    if norm is None:
        return next(iter(entry.values()))
    return entry.get(norm)


def format_eps(eps: float) -> str:
    """``8/255 ≈ 0.03137`` for a multiple of 1/255, else ``0.1`` (as ``%g``)."""
    k = eps * 255
    if abs(k - round(k)) < 1e-9 and round(k) > 0 and abs(eps - round(eps, 6)) > 1e-12:
        return f"{round(k)}/255 ≈ {eps:.4g}"
    return f"{eps:g}"
