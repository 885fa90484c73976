"""The pipeline's stages, one module each, run in order by pipeline.runner."""
