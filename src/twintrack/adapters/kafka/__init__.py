"""The Kafka track: task queue, worker with claims and heartbeats, recovery, batched events."""
