"""Sensor encoders: camera model, LiDAR projection, events, depth, RGB, preprocess (numpy only)."""
