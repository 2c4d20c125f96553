"""edge-sync: the edge-to-cloud synchronisation agent (package root; owns nothing but the version)."""

__version__ = "0.1.0"
