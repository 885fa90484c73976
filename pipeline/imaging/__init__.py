"""Drawing meshes into cameras: the ray-casting renderer (Embree), the differentiable rasterisers (nvdiffrast,
pytorch3d) and bilinear image sampling. Below geometry, appearance and report, which all render."""
