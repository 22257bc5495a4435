"""What every evaluator shares around its attacks (issue 13, issue 14 item 2): the checks that refuse bad
input before a single attack runs (:func:`precheck`), the attack-free validity probes, the fingerprints that
say what determined an evaluation, and the one writer of an evaluation folder (:func:`write_outputs`:
``evaluation.json``, ``report.html`` and the plots, all-or-nothing)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from shieldkit.data.base import ImageDataset
from shieldkit.evaluation import audit as A
from shieldkit.models.protocol import card_of


def precheck(model: nn.Module, dataset: ImageDataset, *, eps: float, norm: str, out: str | Path | None,
             n: int | None = None) -> float:
    """Everything that can be refused before a single attack runs (issue 13): ``--out`` not an existing
    file, a positive point count, ε inside the threat model, model card vs dataset (classes, channels,
    size, ≥ 2 classes) and finite weights. The Python API and the CLI both go through it. Returns ε."""
    from shieldkit.models.checks import check_finite_weights, check_model_data
    from shieldkit.utils.validate import check_eps, check_out_dir, check_positive_int

    check_out_dir(out, flag="out")
    if n is not None:
        check_positive_int(n, "n")
    eps = check_eps(eps, norm, dim=int(torch.tensor(dataset.image_shape).prod()), flag="eps")
    card = card_of(model)
    check_model_data(card, dataset, source=f"model {card.arch!r}" if card is not None else "model")
    check_finite_weights(model, source="model")
    return eps


def validity_probe(system: nn.Module, data: ImageDataset, *, eps: float, norm: str, batch: int,
                   device: torch.device) -> list[dict]:
    """The audit's validity checks that need no attack: finite logits, class count, ε range, sample size."""
    x = data.x[: min(len(data), batch)].to(device)
    with torch.no_grad():
        out = system(x)
    checks = [A.check_finite_outputs(system, x, out), A.check_class_count(int(out.shape[-1]), data.num_classes),
              A.check_eps_range(float(eps), norm, int(torch.tensor(data.image_shape).prod())),
              A.check_sample_size(len(data))]
    return checks


def eval_fingerprints(model: nn.Module, data: ImageDataset, config: dict) -> dict:
    """What determined an evaluation (issue 13): the model's weights + card, the exact points scored and
    the resolved evaluation settings. An evaluation is all-or-nothing (see :func:`write_outputs`), so a
    re-run into the same folder replaces it whole; these say whether the inputs changed."""
    from shieldkit.utils.fingerprint import fingerprint_dataset, fingerprint_model, shieldkit_version

    return {"model": fingerprint_model(model), "data": fingerprint_dataset(data), "evaluation": config,
            "version": shieldkit_version()}


# the files an evaluation writes; any of them left from an earlier evaluation is removed when a new one is
# written into the same folder (plus whatever the earlier evaluation.json listed under "artefacts")
EVAL_ARTEFACTS = ("evaluation.json", "report.html", "eps_curve.png", "iteration_curve.png",
                  "accuracy_vs_queries.png")


def write_outputs(res: dict, pngs: dict[str, bytes], out: Path) -> None:
    """Write the evaluation into ``out``: everything goes to a temporary sibling folder first, then the
    artefacts of any earlier evaluation in ``out`` are removed and the new ones moved in, so a report never
    sits beside stale plots (other files in ``out`` are left alone)."""
    import json
    import shutil
    import tempfile

    from shieldkit.reporting.eval_report import render_html
    from shieldkit.utils.fingerprint import first_difference
    from shieldkit.utils.io import atomic_write_json, atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        from shieldkit.errors import InputError

        raise InputError(f"out {out}: is an existing file, not a folder", hint="give a folder path for --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{k}.png" for k in pngs] + ["evaluation.json", "report.html"]
    try:
        old = json.loads((out / "evaluation.json").read_text())
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = {}
    res = {**res, "artefacts": names, "replaces": None}
    if old:  # the folder held an evaluation: record whether this one was made from the same inputs
        diff = first_difference(old.get("fingerprints") or {}, res.get("fingerprints") or {})
        res["replaces"] = ("an evaluation of the same inputs" if diff is None else
                           f"an evaluation made from other inputs ({diff[0]} changed)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for k, b in pngs.items():
            (tmp / f"{k}.png").write_bytes(b)
        atomic_write_json(tmp / "evaluation.json", {k: v for k, v in res.items() if not k.startswith("_")})
        atomic_write_text(tmp / "report.html", render_html(res, pngs))
        out.mkdir(parents=True, exist_ok=True)
        stale = set(EVAL_ARTEFACTS) | {Path(a).name for a in old.get("artefacts", []) if isinstance(a, str)}
        for name in stale - set(names):
            (out / name).unlink(missing_ok=True)
        # the report last: a reader never sees a new report with the old plots
        for name in sorted(names, key=lambda s: s in ("report.html", "evaluation.json")):
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["EVAL_ARTEFACTS", "eval_fingerprints", "precheck", "validity_probe", "write_outputs"]
