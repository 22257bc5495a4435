"""Score-based query attacks (SQAs) behind a score-only, query-counting oracle.

Square (ℓ∞/ℓ2), SimBA (pixel/DCT), SignHunter, NES and Bandits-TD, untargeted and targeted; see
:func:`run_query_suite` for the UniG Table 1 protocol (``shieldkit evaluate --suite query``).
"""

from shieldkit.attacks.query.bandits import Bandits
from shieldkit.attacks.query.base import QueryAttack, QueryResult, margin
from shieldkit.attacks.query.nes import NES
from shieldkit.attacks.query.oracle import QueryBudgetExceeded, QueryOracle
from shieldkit.attacks.query.signhunter import SignHunter
from shieldkit.attacks.query.simba import SimBA
from shieldkit.attacks.query.square import SquareAttack
from shieldkit.attacks.query.suite import (
    ATTACKS,
    TABLE1_ATTACKS,
    make_attack,
    random_targets,
    run_query_attack,
    run_query_suite,
)

__all__ = ["ATTACKS", "NES", "TABLE1_ATTACKS", "Bandits", "QueryAttack", "QueryBudgetExceeded", "QueryOracle",
           "QueryResult", "SignHunter", "SimBA", "SquareAttack", "make_attack", "margin", "random_targets",
           "run_query_attack", "run_query_suite"]
