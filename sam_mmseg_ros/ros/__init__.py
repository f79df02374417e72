"""The only package that imports rclpy and ROS message types."""
