"""Tracking and counting per camera: multi-object tracks from detections, zones (enter, exit,
occupancy, loitering) and lines (crossings with direction).

The engine (`engine.CameraAnalytics`) is pure: numpy and the standard library, no I/O, no clock
(time comes with each frame), deterministic. The ingest pipeline and `pantau analyse` drive it the
same way. See docs/analytics.md."""
