"""Meta's reference modeling code for parity tests: segment_anything (SAM) and sam2 (SAM2).

Both packages' __init__ import what is not installable here or not needed (segment_anything:
torchvision, which has no build for torch 2.13.0 CPU; sam2: hydra's config machinery), so a bare
module with the installed folder as its __path__ stands in for the package; the modeling
submodules need only torch (and iopath for sam2's Hiera).
"""

import importlib
import importlib.util
import sys
import types

import pytest


def _bare_package(name: str) -> None:
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            pytest.skip(f"{name} is not installed")
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = package


def meta_modeling(module: str):
    """segment_anything.modeling.<module>; skips the test when segment-anything is not installed."""
    _bare_package("segment_anything")
    return importlib.import_module(f"segment_anything.modeling.{module}")


def meta_sam2(module: str):
    """sam2.modeling.<module> (e.g. "backbones.hieradet"); skips the test when sam2 is not installed."""
    _bare_package("sam2")
    return importlib.import_module(f"sam2.modeling.{module}")
