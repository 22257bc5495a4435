"""Property-based tests (hypothesis) for the validators in shieldkit.utils.validate."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shieldkit.errors import DependencyError, InputError, MissingInputError, ShieldkitError
from shieldkit.utils import validate as v

FAST = settings(max_examples=150, deadline=None)
finite = st.floats(allow_nan=False, allow_infinity=False)


@FAST
@given(finite)
def test_linf_eps_accepted_iff_in_unit_interval(x):
    if 0 < x <= 1:
        assert v.check_eps(x, "linf") == x
        assert v.check_eps(repr(x), "linf") == pytest.approx(x)
    else:
        with pytest.raises(InputError, match="--eps"):
            v.check_eps(x, "linf")


@FAST
@given(finite, st.integers(1, 4096))
def test_l2_eps_bounded_by_sqrt_dim(x, d):
    ok = 0 < x <= math.sqrt(d)
    if ok:
        assert v.check_eps(x, "l2", dim=d) == x
    else:
        with pytest.raises(InputError, match="--eps"):
            v.check_eps(x, "l2", dim=d)
    if x > 0:  # without a known dimension only positivity is required
        assert v.check_eps(x, "l2") == x


@FAST
@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_fractions_parse(num, den):
    assert v.parse_eps(f"{num}/{den}") == pytest.approx(num / den)


@FAST
@given(st.text(max_size=12))
def test_parse_eps_never_raises_anything_but_input_error(text):
    try:
        out = v.parse_eps(text, flag="--foo")
    except InputError as exc:
        assert "--foo" in str(exc)
    else:
        assert math.isfinite(out)


@pytest.mark.parametrize("bad", ["abc", "1/0", "nan", "inf", "-inf", "", "1/", "/2", "1e999"])
def test_parse_eps_bad_strings(bad):
    with pytest.raises(InputError, match="--eps"):
        v.parse_eps(bad)


@FAST
@given(st.integers(-10**6, 10**6))
def test_positive_and_nonnegative_int(n):
    if n >= 1:
        assert v.check_positive_int(n, "--n") == n and v.check_positive_int(str(n), "--n") == n
    else:
        with pytest.raises(InputError, match="--n"):
            v.check_positive_int(n, "--n")
    if n >= 0:
        assert v.check_nonnegative_int(n, "--k") == n
    else:
        with pytest.raises(InputError, match="--k"):
            v.check_nonnegative_int(n, "--k")


@FAST
@given(st.one_of(st.floats(), st.text(max_size=6), st.booleans(), st.none()))
def test_positive_int_rejects_non_integers(x):
    try:
        out = v.check_positive_int(x, "--n")
    except InputError:
        return
    assert isinstance(out, int) and out >= 1 and not isinstance(x, bool)


@FAST
@given(st.floats())
def test_positive_float(x):
    if math.isfinite(x) and x > 0:
        assert v.check_positive_float(x, "--sigma") == x
    else:
        with pytest.raises(InputError, match="--sigma"):
            v.check_positive_float(x, "--sigma")


@FAST
@given(st.floats())
def test_fraction(x):
    open_ok, closed_ok = math.isfinite(x) and 0 < x < 1, math.isfinite(x) and 0 <= x <= 1
    for closed, ok in ((False, open_ok), (True, closed_ok)):
        if ok:
            assert v.check_fraction(x, "--alpha", closed=closed) == x
        else:
            with pytest.raises(InputError, match="--alpha"):
                v.check_fraction(x, "--alpha", closed=closed)


@FAST
@given(st.integers(-5, 1000))
def test_num_classes(k):
    if k >= 2:
        assert v.check_num_classes(k) == k
    else:
        with pytest.raises(InputError, match="at least two classes"):
            v.check_num_classes(k)


@FAST
@given(st.lists(st.integers(-100, 10**6), min_size=1, max_size=6))
def test_int_list(values):
    text = ",".join(map(str, values))
    if min(values) > 0:
        assert v.parse_int_list(text, "--budgets") == sorted(set(values))
    else:
        with pytest.raises(InputError, match="--budgets"):
            v.parse_int_list(text, "--budgets")


@FAST
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz:0123456789", max_size=8))
def test_device_names(name):
    try:
        dev = v.resolve_device(name)
    except DependencyError as exc:
        assert "--device" in str(exc) and name.startswith(("cuda", "mps"))
    except InputError as exc:
        assert "--device" in str(exc) and "unknown device" in str(exc)
    else:
        assert isinstance(dev, torch.device) and dev.type in ("cpu", "cuda", "mps")


def test_device_cpu_auto_and_cuda_message():
    assert v.resolve_device("cpu") == torch.device("cpu")
    assert v.resolve_device(None).type in ("cpu", "cuda")
    assert v.resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DependencyError) as exc:
            v.resolve_device("cuda")
        assert str(exc.value) == "--device cuda: CUDA is not available on this machine; use --device cpu or auto"
        with pytest.raises(RuntimeError):  # device.resolve_device (the API) routes through the validator
            from shieldkit.utils.device import resolve_device

            resolve_device("cuda:0")


@FAST
@given(st.text(alphabet="abcxyz_-", min_size=1, max_size=8))
def test_out_dir_never_creates_anything(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("o")
    (root / "f").write_text("x")
    target = root / name / "sub"
    assert v.check_out_dir(target) == target
    assert sorted(p.name for p in root.iterdir()) == ["f"]  # nothing created
    with pytest.raises(InputError, match="--out"):
        v.check_out_dir(root / "f")
    with pytest.raises(InputError, match="is a file"):
        v.check_out_dir(root / "f" / name)
    with pytest.raises(InputError, match="existing folder"):
        v.check_out_file(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_out_dir_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            v.check_out_dir(ro / "x")
    finally:
        ro.chmod(0o700)


def test_existence_checks(tmp_path):
    with pytest.raises(MissingInputError, match="--teacher"):
        v.check_model_path(tmp_path / "nope", "--teacher")
    with pytest.raises(MissingInputError, match="--synthetic"):
        v.check_existing_dir(tmp_path / "nope", "--synthetic")
    assert isinstance(MissingInputError("x"), FileNotFoundError)  # API compatibility
    assert issubclass(InputError, ValueError) and issubclass(DependencyError, RuntimeError)


def test_dataset_suggestion():
    from shieldkit.data.validate import check_dataset

    with pytest.raises(InputError) as exc:
        check_dataset("mnist5")
    assert "did you mean 'mnist5k'?" in exc.value.lines()[-1]
    assert check_dataset("mnist5k") == "mnist5k"


def test_every_error_renders_in_at_most_three_lines():
    for call in (lambda: v.check_eps("abc", "linf"), lambda: v.check_norm("l3"),
                 lambda: v.resolve_device("tpu"), lambda: v.check_out_dir(Path(__file__))):
        with pytest.raises(ShieldkitError) as exc:
            call()
        assert 1 <= len(exc.value.lines()) <= 3
