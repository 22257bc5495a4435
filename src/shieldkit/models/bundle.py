"""Self-contained saved models: an imported model whose architecture is a file (TorchScript, torch.export
``.pt2``, a Python class) gets that file copied next to its weights with its sha256 (:func:`bundle_architecture`)
and is rebuilt from the copy on load (:func:`load_imported`, verified against the hash). Registered with
:mod:`shieldkit.models.io` as the loader of ``imported:`` architectures, so ``save_model`` / ``load_model``
need not import the importers (no ``io`` ↔ ``importers`` circle).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from shieldkit.errors import IntegrityError, MissingInputError
from shieldkit.models.importers import ModelImportError, import_model
from shieldkit.models.io import _paths, load_model, register_arch_loader
from shieldkit.models.pysource import sha256_file, verify_sha256
from shieldkit.models.wrapper import ModelCard, NormalizedClassifier
from shieldkit.utils.io import load_tensors, read_json

ARCH_SUFFIX = {"torchscript": ".arch.ts", "python": ".arch.py", "export": ".arch.pt2"}


def arch_file_source(card: ModelCard) -> Path | None:
    """The file an imported model's architecture is read from (TorchScript archive / Python source), if any."""
    spec = card.extra.get("import") or {}
    return Path(spec["path"]) if spec.get("source") in ARCH_SUFFIX and spec.get("path") else None


def bundle_architecture(card: ModelCard, weights: Path) -> dict:
    """Copy an imported model's architecture file next to its weights (``<stem>.arch.ts`` / ``<stem>.arch.py``)
    and return the card dict to write to the sidecar: ``extra["import"]`` gains ``arch_file`` (the copy's
    name, relative to the sidecar's folder) and ``arch_sha256``; the absolute ``path`` is not written (it
    stays in memory, pointing at the copy). The source's hash is verified first: the weights belong to
    the code that was imported. Other models: the card as it is."""

    d = card.to_dict()
    src = arch_file_source(card)
    if src is None:
        return d
    spec = dict(card.extra["import"])
    digest = verify_sha256(src, spec.get("arch_sha256"))
    stem = weights.name[: -len(".safetensors")] if weights.name.endswith(".safetensors") else weights.stem
    dest = weights.with_name(stem + ARCH_SUFFIX[spec["source"]])
    if dest.resolve() != src.resolve():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    if sha256_file(dest) != digest:
        raise IntegrityError(f"{dest}: copy of the architecture source does not match its sha256")
    card.extra["import"]["path"] = str(dest.resolve())  # the in-memory model now points at its own copy
    card.extra["import"]["arch_sha256"] = digest
    spec.pop("path", None)
    d["extra"]["import"] = {**spec, "arch_file": dest.name, "arch_sha256": digest}
    return d


def rebuild_imported(card: ModelCard, base_dir: str | Path | None = None) -> NormalizedClassifier:
    """Re-create an imported model's architecture from its card (weights are then loaded by the caller).

    The import spec in ``card.extra["import"]`` names the architecture and the head/features/channel
    choices. For a TorchScript or Python-class model the architecture is the file ``arch_file`` in
    ``base_dir`` (the sidecar's folder), whose sha256 must equal ``arch_sha256`` (``IntegrityError``
    otherwise). Sidecars written before self-contained saving carry an absolute ``path`` instead (no hash):
    that file must still exist and is used as it is.
    """
    spec = card.extra.get("import")
    if not spec:
        raise ModelImportError(f"model card for {card.arch!r} carries no import spec; it was not made by import_model")
    expected = None
    if spec["source"] in ARCH_SUFFIX:
        if spec.get("arch_file"):
            file = Path(base_dir or ".") / spec["arch_file"]
            expected = spec.get("arch_sha256")
            verify_sha256(file, expected)
        else:  # old sidecar: absolute path, no hash
            file = Path(spec["path"])
        source = f"{file}:{spec['class']}" if spec["source"] == "python" else str(file)
    else:
        source = spec["arch"]
    arch = spec.get("arch") if spec["source"] == "torchscript" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": the trained weights are loaded next
        model = import_model(source, arch=arch, num_classes=card.num_classes, in_channels=card.in_channels,
                             image_size=card.image_size, mean=card.mean, std=card.std,
                             head_layer=spec.get("head_layer"), features_layer=spec.get("features_layer"),
                             dataset=card.dataset, classes=card.classes, init_args=spec.get("init_args"),
                             expected_sha256=expected)
    return model


def load_imported(path: str | Path, device: str | torch.device = "cpu") -> NormalizedClassifier:
    """Load a model saved with :func:`shieldkit.models.save_model` that came from :func:`import_model`
    (``load_model`` only knows registry architectures); registry models are passed to ``load_model``."""

    weights, sidecar = _paths(path)
    if not sidecar.exists():
        raise MissingInputError(f"{sidecar}: missing JSON sidecar of {weights}")
    card = ModelCard.from_dict(read_json(sidecar))
    if not card.arch.startswith("imported:"):
        return load_model(path, device=str(device))
    model = rebuild_imported(card, base_dir=sidecar.parent)
    current = model.card.extra.get("import", {}).get("path")
    model.card.arch = card.arch  # the label recorded at import (rebuilding from the copy names the copy)
    model.card.extra = dict(card.extra)
    if current is not None and card.extra["import"].get("source") in ARCH_SUFFIX:
        model.card.extra["import"] = {**card.extra["import"], "path": current}  # in memory: where the code is
    model.load_state_dict(load_tensors(weights), strict=True)
    return model.to(device).eval()


register_arch_loader("imported:", bundle=bundle_architecture, load=load_imported)
