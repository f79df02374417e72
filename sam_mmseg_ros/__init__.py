"""sam_mmseg_ros: multi-modal MoE-LoRA SAM semantic segmentation for ROS 2 (see DESIGN.md)."""

__version__ = "0.1.0"
