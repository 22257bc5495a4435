"""Attacks. :mod:`~shieldkit.attacks.pgd` is the shared projected-gradient engine used both for
training (inner maximisation with any loss) and evaluation; library attacks (pyautoattack,
torchattacks, ART) are wrapped behind the same call signature elsewhere in this package."""

from shieldkit.attacks.pgd import PGDConfig, pgd, project

__all__ = ["PGDConfig", "pgd", "project"]
