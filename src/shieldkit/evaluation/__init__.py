"""Evaluation: the first-cut robustness numbers (basic) and the full audited suite (suite, audit)."""
