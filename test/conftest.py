"""Shared pytest fixtures and skips."""

import importlib.util

import pytest


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAS_RCLPY = _has("rclpy")


def _has_gpu() -> bool:
    """A CUDA device reachable through torch, or through TensorRT + pycuda: the documented
    install is CPU torch, and a vehicle with TensorRT must still run the GPU tests."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    from sam_mmseg_ros.engine.tensorrt_backend import TensorRTUnavailable, probe

    try:
        probe()
    except TensorRTUnavailable:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip_ros = pytest.mark.skip(reason="rclpy is not importable")
    skip_gpu = pytest.mark.skip(reason="no CUDA device (neither torch CUDA nor TensorRT + pycuda)")
    gpu = None
    for item in items:
        if "ros" in item.keywords and not HAS_RCLPY:
            item.add_marker(skip_ros)
        if "gpu" in item.keywords:
            gpu = _has_gpu() if gpu is None else gpu
            if not gpu:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one thread for a module: the 2-core CI machine runs other work alongside."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
