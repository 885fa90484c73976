"""hotmesh daemon: intake, ledger, workers, CLI."""
from pipeline import __version__

__all__ = ["__version__"]
