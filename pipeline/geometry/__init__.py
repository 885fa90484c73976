"""The object's shape: its region in the scene (support plane, normalisation), plane-sweep multi-view stereo, TSDF
fusion, the visual hull, meshing and mesh clean-up, silhouettes estimated from the photos and automatic masks."""
