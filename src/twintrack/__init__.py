"""twintrack: flow executions on a Kafka track and a DBOS track, side by side."""
