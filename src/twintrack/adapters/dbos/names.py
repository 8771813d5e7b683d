"""The names DBOS knows our work by: the workflow every execution runs, and its queue.

Shared by the worker that registers the workflow, the runtime that listens on the queue and the
client that enqueues, which must agree on them (DBOS finds a workflow and a queue by name).
"""

QUEUE_NAME = "twintrack-executions"
WORKFLOW_NAME = "twintrack_execution"
