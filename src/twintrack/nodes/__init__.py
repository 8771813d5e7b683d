"""Node types: the built-ins and the plugin registry (entry-point group `twintrack.nodes`)."""
