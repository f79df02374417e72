"""Meta's reference segment_anything.modeling, for parity tests.

The package's __init__ imports torchvision (not installable here with torch 2.13.0 CPU), so a bare
module with the installed folder as its __path__ stands in for it; the modeling submodules need
only torch.
"""

import importlib
import importlib.util
import sys
import types

import pytest


def meta_modeling(module: str):
    """segment_anything.modeling.<module>; skips the test when segment-anything is not installed."""
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            pytest.skip("segment-anything is not installed")
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = package
    return importlib.import_module(f"segment_anything.modeling.{module}")
