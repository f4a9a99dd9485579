"""The check of ``relground.extension`` that the native extension fits the running torch, as pure functions.

``check_build_matches`` compares ``relground._C.build_info()`` with a torch version; ``load_extension`` takes the
importer, the versions and the environment as arguments, so every outcome (fits, another torch, an undefined
symbol, not built, the ``RELGROUND_ALLOW_FALLBACK=1`` fallback) is tested without building anything.
"""
from __future__ import annotations

import types

import pytest

from relground.extension import FALLBACK_ENV, check_build_matches, load_extension

CPU_BUILD_214 = {"torch_version": "2.14.1", "cuda_compiled": False, "cuda_runtime_version": None}
CUDA_BUILD_214 = {"torch_version": "2.14.1", "cuda_compiled": True, "cuda_runtime_version": 13000}


def fake_extension(info: dict) -> types.ModuleType:
    module = types.ModuleType("relground._C")
    module.build_info = lambda: dict(info)
    return module


def raising(exc: BaseException):
    def importer():
        raise exc

    return importer


# ---- check_build_matches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "built, torch_version, cuda_version",
    [
        (CPU_BUILD_214, "2.14.1", None),  # same version, CPU torch
        (CPU_BUILD_214, "2.14.1+cpu", None),
        (CUDA_BUILD_214, "2.14.1+cu130", "13.0"),  # same version and CUDA
        (CPU_BUILD_214, "2.14.1+cu130", "13.0"),  # CPU-only extension under a CUDA torch: fine
        (CUDA_BUILD_214, "2.14.1", "13.2"),  # same CUDA major: minor-version compatible
        (CPU_BUILD_214, "2.14.0", None),  # another patch release of the same minor (the +pt214 wheel label)
    ],
)
def test_fits(built, torch_version, cuda_version):
    assert check_build_matches(built, torch_version, cuda_version) is None


def test_other_torch_names_both_versions_and_the_rebuild_command():
    message = check_build_matches(CPU_BUILD_214, "2.13.0+cpu", None)
    assert message is not None
    assert "2.14.1" in message and "2.13.0+cpu" in message
    assert "pip install --no-build-isolation -e ." in message
    assert "python setup.py build_ext --inplace" in message


def test_newer_torch_is_a_mismatch_too():
    message = check_build_matches({**CPU_BUILD_214, "torch_version": "2.13.0"}, "2.14.1+cu130", "13.0")
    assert message is not None and "2.13.0" in message and "2.14.1+cu130" in message


def test_cuda_extension_under_cpu_torch():
    message = check_build_matches(CUDA_BUILD_214, "2.14.1+cpu", None)
    assert message is not None and "CUDA 13.0" in message and "CPU-only" in message


def test_cuda_major_mismatch():
    message = check_build_matches({**CUDA_BUILD_214, "cuda_runtime_version": 12080}, "2.14.1+cu130", "13.0")
    assert message is not None and "CUDA 12.8" in message and "CUDA 13.0" in message


def test_unparsable_build_version_is_a_mismatch():
    assert check_build_matches({"torch_version": "", "cuda_compiled": False}, "2.14.1", None) is not None


# ---- load_extension ---------------------------------------------------------------------------------------------


def test_load_fitting_extension():
    module = fake_extension(CPU_BUILD_214)
    assert load_extension(lambda: module, "2.14.1+cu130", "13.0", environ={}) == (module, None)


def test_load_mismatch_raises_import_error():
    with pytest.raises(ImportError) as info:
        load_extension(lambda: fake_extension(CPU_BUILD_214), "2.13.0+cpu", None, environ={})
    message = str(info.value)
    assert "2.14.1" in message and "2.13.0+cpu" in message
    assert "pip install --no-build-isolation" in message and FALLBACK_ENV in message


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_load_mismatch_with_fallback_env_warns(value):
    with pytest.warns(RuntimeWarning, match="2.13.0"):
        module, reason = load_extension(
            lambda: fake_extension(CPU_BUILD_214), "2.13.0+cpu", None, environ={FALLBACK_ENV: value}
        )
    assert module is None and "2.14.1" in reason


def test_fallback_env_zero_does_not_allow_the_fallback():
    with pytest.raises(ImportError):
        load_extension(lambda: fake_extension(CPU_BUILD_214), "2.13.0+cpu", None, environ={FALLBACK_ENV: "0"})


def test_undefined_symbol_raises_abi_message():
    error = ImportError("/x/relground/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
    with pytest.raises(ImportError) as info:
        load_extension(raising(error), "2.13.0+cpu", None, environ={})
    message = str(info.value)
    assert "ABI mismatch" in message and "2.13.0+cpu" in message and "undefined symbol" in message
    assert "pip install --no-build-isolation" in message
    assert info.value.__cause__ is error


def test_undefined_symbol_with_fallback_env_warns():
    error = ImportError("/x/relground/_C.so: undefined symbol: _ZN3c10")
    with pytest.warns(RuntimeWarning, match="ABI mismatch"):
        assert load_extension(raising(error), "2.13.0", None, environ={FALLBACK_ENV: "1"})[0] is None


def test_not_built_warns_and_falls_back_without_the_env_var():
    error = ModuleNotFoundError("No module named 'relground._C'", name="relground._C")
    with pytest.warns(RuntimeWarning, match="not built"):
        module, reason = load_extension(raising(error), "2.14.1", None, environ={})
    assert module is None and "not built" in reason


def test_missing_dependency_of_the_extension_is_not_taken_for_not_built():
    # e.g. a CUDA build whose libraries are absent: the .so is there, so this is an error, not a quiet fallback
    error = ModuleNotFoundError("No module named 'something_else'", name="something_else")
    with pytest.raises(ImportError, match="fails to load"):
        load_extension(raising(error), "2.14.1", None, environ={})
