"""How the mesh looks against the photos: differentiable-rendering refinement, vertex colours, the UV atlas, baking and
the texture fit."""
