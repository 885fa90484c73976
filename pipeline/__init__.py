"""hotmesh pipeline: stages that turn a validated image folder into a mesh and a report."""
