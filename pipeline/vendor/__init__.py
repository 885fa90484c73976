"""Data only: third-party files the package ships (the report's 3-D viewer, <model-viewer>, with its licences)."""
