"""twintrack benchmarks: the numbers of DESIGN §4, measured on a whole deployment on real servers.

`uv run python -m bench [--quick] [--out docs/benchmarks.md]` starts (or finds) PostgreSQL and the
broker, and for each *mode* (a set of settings, one column of the results table) builds a fresh
deployment — migrated database, API over real HTTP, `twintrack worker` processes — and drives it
the way users do: through the HTTP API and its Server-Sent Events.

Modules, one idea each:

- `config`: modes, sample sizes, the settings every deployment gets
- `infra`: servers, fresh databases, deployments (API + worker processes)
- `sse`: a timed SSE subscription (when each event reached the client)
- `flows`: the flows the measurements run
- `stats`, `procs`, `machine`: percentiles, per-process CPU and memory, machine facts
- `latency`, `throughput`, `event_latency`, `commands`, `children`, `recovery`, `rss`: one
  measurement each (DESIGN §4), each returning rows for the results table
- `loadgen`: the load generator of `throughput`, run as its own process
- `report`: the Markdown table and the rewrite of `docs/benchmarks.md`
"""
