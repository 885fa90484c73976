"""Cameras: pose conventions and helpers, structure from motion (pycolmap), the camera files hotmesh reads and
publishes (transforms.json, COLMAP text), and real-world scale from markers or a known distance."""
