"""`twintrack dev`: everything on one machine, for trying twintrack and for developing it.

Servers come from the environment when their URLs are set, else embedded ones are started
(both throw-away: the embedded broker keeps events in memory only, so the database is
throw-away too, keeping the two consistent). Then: migrate, make an API key, and run the API
with a worker in this process. The environment another `twintrack worker` needs to join is
printed and written to `.twintrack/dev.env`, with the API URL and key the CLI's client commands
read (`TWINTRACK_API_URL`, `TWINTRACK_API_KEY`). The dev key is an admin key, so
`twintrack compare` (which picks the track of each run) works against `dev` as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
from pathlib import Path

from twintrack.config import load_settings
from twintrack.tooling.embedded.discovery import provide_broker, provide_postgres

DEV_OWNER = "dev"
API_URL_ENV = "TWINTRACK_API_URL"
API_KEY_ENV = "TWINTRACK_API_KEY"


def _banner(api: str, key: str, env_file: Path, env: dict[str, str]) -> str:
    exports = "\n".join(f"  export {k}={shlex.quote(v)}" for k, v in env.items())
    return f"""
twintrack dev is running.

  API        {api}   (OpenAPI: {api}/docs)
  Console    {api}/ui   (sign in with the API key)
  API key    {key}   (owner '{DEV_OWNER}', admin)

Try it:
  export TT_KEY={key}
  ID='s/.*"id":"\\([^"]*\\)".*/\\1/'
  FLOW=$(curl -s -X POST {api}/v1/flows -H "Authorization: Bearer $TT_KEY" \\
      -H 'Content-Type: application/json' --data @examples/hello.json | sed "$ID")
  EX=$(curl -s -X POST {api}/v1/executions -H "Authorization: Bearer $TT_KEY" \\
      -H 'Content-Type: application/json' -d "{{\\"flow_id\\": \\"$FLOW\\"}}" | sed "$ID")
  curl -s -X POST {api}/v1/executions/$EX/start -H "Authorization: Bearer $TT_KEY"
  curl -sN {api}/v1/executions/$EX/events -H "Authorization: Bearer $TT_KEY"

Compare the two tracks on a flow:
  export {API_URL_ENV}={api} {API_KEY_ENV}={key}
  twintrack compare examples/diamond.json --runs 10

Another worker joins with (also in {env_file}):
{exports}
  twintrack worker

Ctrl-C stops everything. (`twintrack dev -v` shows every library's logs.)
"""


def _progress(line: str) -> None:
    sys.stdout.write(f"  {line}\n")
    sys.stdout.flush()


def _quiet_level(level: str) -> str:
    """Without -v, only warnings and errors: Alembic's, DBOS's and aiokafka's start-up chatter
    (~130 lines) would bury the banner a newcomer needs to read."""
    return level if level in {"WARNING", "ERROR"} else "WARNING"


def run_dev(port: int | None = None, *, verbose: bool = False) -> None:
    from twintrack.entrypoints.cli.support import configure_from
    from twintrack.observability.logs import configure_logging

    if not verbose:
        configure_logging("WARNING")
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(provide_postgres())
        _progress(f"PostgreSQL ready   {pg.description}")
        broker = stack.enter_context(provide_broker())
        _progress(f"broker ready       {broker.description}")
        env = {
            "DATABASE_URL": pg.url,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": "true" if broker.capabilities.idempotence else "false",
        }
        if os.environ.get("KAFKA_TOPIC_PREFIX"):  # a joining worker must use the same topics
            env["KAFKA_TOPIC_PREFIX"] = os.environ["KAFKA_TOPIC_PREFIX"]
        os.environ.update(env)
        if port is not None:
            os.environ["API_PORT"] = str(port)
        settings = load_settings()
        from twintrack.bootstrap import migrate
        from twintrack.entrypoints.processes import run_all

        if verbose:
            configure_from(settings)
        else:
            configure_logging(_quiet_level(settings.log_level), settings.log_format)
        asyncio.run(migrate(pg.url))
        _progress("migrated           twintrack and DBOS schemas at the latest version")
        key = asyncio.run(_create_key(settings.database_url or pg.url))
        env_file = Path(".twintrack/dev.env")
        env_file.parent.mkdir(exist_ok=True)
        api = f"http://{settings.api_host}:{settings.api_port}"
        client_env = {API_URL_ENV: api, API_KEY_ENV: key}
        env_file.write_text("".join(f"{k}={v}\n" for k, v in {**env, **client_env}.items()))

        def ready() -> None:
            tracks = " and ".join(t.value for t in settings.worker_tracks)
            _progress(f"worker joined      serving the {tracks} track(s)")
            _progress(f"API listening      {api}")
            sys.stdout.write(_banner(api, key, env_file, env))
            sys.stdout.flush()

        from twintrack.entrypoints.loop import run

        run(run_all(settings, ready), settings.event_loop)


async def _create_key(database_url: str) -> str:
    """The dev owner's key: an admin key, so `twintrack compare` can choose tracks with it."""
    return await _create_key_for(database_url, DEV_OWNER, admin=True)


async def _create_key_for(database_url: str, owner: str, admin: bool = False) -> str:
    from twintrack.adapters.postgres.db import create_engine, create_session_factory
    from twintrack.adapters.postgres.keys import PostgresKeyStore

    engine = create_engine(database_url)
    try:
        created = await PostgresKeyStore(create_session_factory(engine)).create(owner, admin=admin)
        return created.key
    finally:
        await engine.dispose()
