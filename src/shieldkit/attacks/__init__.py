"""Attacks. One interface (:mod:`~shieldkit.attacks.base`): ``create_attack(name, eps=…, norm=…,
budget=…)`` returns an :class:`~shieldkit.attacks.base.Attack`; calling it on ``(model, x, y)`` returns an
:class:`~shieldkit.attacks.base.AttackResult` (``x_adv``, per-point ``robust``, ``meta`` with forwards /
backwards / queries / seconds), with the threat model verified. :data:`ATTACKS` lists the registered names
(:mod:`~shieldkit.attacks.registry`); pyautoattack, torchattacks and ART are backends behind it.
:mod:`~shieldkit.attacks.pgd` stays the projected-gradient engine robust training uses for its inner
maximisation with any loss."""

from shieldkit.attacks.base import ATTACKS, Attack, AttackResult, create_attack, list_attacks
from shieldkit.attacks.pgd import PGDConfig, pgd, project

__all__ = ["ATTACKS", "Attack", "AttackResult", "PGDConfig", "create_attack", "list_attacks", "pgd", "project"]
