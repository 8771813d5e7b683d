"""twintrack benchmarks: the numbers of DESIGN §4, measured on a whole deployment on real servers.

`uv run python -m bench [--quick] [--out docs/benchmarks.md]` starts (or finds) PostgreSQL and the
broker, measures the physical bound (one-row commits of that PostgreSQL) and the two bare
libraries the tracks are built on (aiokafka + a PostgreSQL claim row; a plain DBOS 3.4 queue), and
for each *mode* (a set of settings, one column of the results table) builds fresh deployments in
two shapes — *split* (API over real HTTP in this process + `twintrack worker` processes) and *dev*
(one `twintrack dev` process) — and drives them the way users do: through the HTTP API and its
Server-Sent Events. One table: a column per mode, then the baselines, then ratios (each mode over
its library, each DBOS mode over Kafka).

Modules, one idea each:

- `config`: modes, shapes, sample sizes, the settings every deployment gets
- `infra`: servers, fresh databases, deployments (split: API + worker processes; dev: one process)
- `sse`: a timed SSE subscription (when each event reached the client)
- `flows`: the flows the measurements run
- `stats`, `procs`, `machine`, `cpu`: percentiles, per-process CPU and memory, machine facts,
  CPU ms per execution as table rows
- `latency`, `throughput`, `event_latency`, `commands`, `children`, `recovery`, `rss`: one
  measurement each (DESIGN §4), each returning rows for the results table
- `bound`: one-row commits/s of the run's PostgreSQL (pgbench, or an asyncpg loop)
- `bare`, `bare_kafka`, `bare_dbos`, `bare_args`: the bare baselines (worker and client
  processes of their own, one shared command line)
- `loadgen`: the load generator of `throughput`, run as its own process
- `report`: the Markdown table and the rewrite of `docs/benchmarks.md`
- `soak`, `chaos`, `soak_check`, `soak_report`: the chaos soak (`--only soak`, separate)
"""
