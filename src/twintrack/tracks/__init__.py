"""Execution tracks: adapters behind the ports of `twintrack.ports`."""
