"""hotmesh pipeline: stages that turn a validated image folder into a mesh and a report."""
__version__ = "0.1.0"
