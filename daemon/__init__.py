"""hotmesh daemon: intake, ledger, workers, CLI."""
__version__ = "0.1.0"
