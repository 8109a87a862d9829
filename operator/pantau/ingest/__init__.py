"""The program inside ingest pods: camera sources, sampling and the frame pipeline."""
