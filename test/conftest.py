"""Shared pytest fixtures and skips."""

import importlib.util

import pytest


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAS_RCLPY = _has("rclpy")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    skip_ros = pytest.mark.skip(reason="rclpy is not importable")
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    cuda = None
    for item in items:
        if "ros" in item.keywords and not HAS_RCLPY:
            item.add_marker(skip_ros)
        if "gpu" in item.keywords:
            cuda = _has_cuda() if cuda is None else cuda
            if not cuda:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one thread for a module: the 2-core CI machine runs other work alongside."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
