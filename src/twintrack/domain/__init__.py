"""Pure data and rules: flows, executions, events, commands. No I/O lives here."""
