"""Pantau: CCTV analytics operator."""
