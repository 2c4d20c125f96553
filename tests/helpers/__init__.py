"""Helpers shared by the integration and chaos tests (real `edge-sync run` processes)."""
