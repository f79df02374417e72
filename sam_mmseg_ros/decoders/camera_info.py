"""sensor_msgs/CameraInfo -> CameraModel."""

from __future__ import annotations

from sam_mmseg_ros.contracts import InputError
from sam_mmseg_ros.sensors.camera import CameraModel


def camera_info_to_model(msg) -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel; an unusable calibration raises InputError."""
    try:
        return CameraModel.from_camera_info(msg.width, msg.height, msg.distortion_model, msg.d, msg.k,
                                            msg.p, frame_id=str(msg.header.frame_id))
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(f"camera_info cannot be read: {exc}") from exc
