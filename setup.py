"""ament_python package: `colcon build` installs it into a ROS 2 workspace, `pip install .` anywhere."""
from glob import glob

from setuptools import find_packages, setup

package_name = "sam_mmseg_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz")),
    ],
    package_data={package_name: ["assets/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "setuptools",
        "numpy>=1.24",
        "torch>=2.1",
        "onnx>=1.15",
        "onnxscript",  # torch.onnx.export(dynamo=True): the node exports a checkpoint for ONNX Runtime / TensorRT
        "onnxruntime>=1.17",
        "rosbags>=0.10",
        "tqdm",
        "pillow",
        "opencv-python-headless",
        "matplotlib",
        "pyyaml",
    ],
    extras_require={
        "test": [
            "pytest",
            "ruff",
            "segment-anything",
            "iopath",  # for sam2's Hiera (sam2 itself: Makefile, --no-deps)
            "colcon-common-extensions",
            "xmlschema",
        ],
    },
    zip_safe=True,
    maintainer="sam_mmseg_ros maintainers",
    maintainer_email="perception@sam-mmseg.dev",
    description="Multi-modal MoE-LoRA SAM semantic segmentation for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "sam_mmseg_node = sam_mmseg_ros.ros.node:main",
            "sam-mmseg = sam_mmseg_ros.cli:main",
        ],
    },
)
