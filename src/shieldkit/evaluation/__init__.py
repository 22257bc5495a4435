"""Evaluation: the first-cut robustness numbers (basic), the full audited suite (suite, audit) and the
adaptive evaluations of specific defences (breaks, atop)."""
