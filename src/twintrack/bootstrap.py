"""ServiceFactory: the composition root. The only module that picks implementations.

From Settings it builds a `Container` with the stores, the task queue of each available
track, the event bus of each events backend, the command channel and the service; workers
and the sweeper are built on top of a container. Nothing else imports a concrete adapter.

Every port can be overridden (`ServiceFactory.build(executions=..., buses=...)`, as
cosmicpython's `bootstrap(uow=...)`): what is not given is the production adapter.
`in_memory()` composes the whole service on adapters/memory, with no server and no URL, for
the use-case unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from twintrack.adapters.dbos.admission import DbosAdmission
from twintrack.adapters.dbos.events import DbosStreamEventBus
from twintrack.adapters.dbos.queue import DbosTaskQueue
from twintrack.adapters.dbos.recovery import DbosWorkflows
from twintrack.adapters.dbos.runtime import DbosConfig, DbosRuntime
from twintrack.adapters.dbos.worker import DbosWorker
from twintrack.adapters.kafka.clients import KafkaConfig, ensure_topics
from twintrack.adapters.kafka.events import KafkaEventBus
from twintrack.adapters.kafka.tasks import KafkaTaskQueue
from twintrack.adapters.kafka.worker import KafkaWorker
from twintrack.adapters.memory import (
    MemoryCommandChannel,
    MemoryEventBus,
    MemoryPorts,
    MemoryStores,
)
from twintrack.adapters.memory.bulk import MemoryBulkStore
from twintrack.adapters.memory.recovery import MemoryRecovery
from twintrack.adapters.memory.rollout import MemoryGuardStore, MemoryRolloutStore
from twintrack.adapters.memory.scorecard import MemoryScorecardStore
from twintrack.adapters.memory.shadow import MemoryShadowStore
from twintrack.adapters.postgres.bulk import PostgresBulkStore
from twintrack.adapters.postgres.claims import PostgresClaimStore
from twintrack.adapters.postgres.commands import PostgresCommandChannel
from twintrack.adapters.postgres.counters import PostgresCounterStore
from twintrack.adapters.postgres.db import create_engine, create_session_factory, one_statement
from twintrack.adapters.postgres.executions import PostgresExecutionStore
from twintrack.adapters.postgres.flows import PostgresFlowStore
from twintrack.adapters.postgres.keys import PostgresKeyStore
from twintrack.adapters.postgres.leader import AdvisoryLeader
from twintrack.adapters.postgres.recovery import (
    PostgresRecoveryAudit,
    PostgresRecoveryStore,
    PostgresRerouteStore,
)
from twintrack.adapters.postgres.rollout import (
    PostgresGuardStore,
    PostgresRolloutFeed,
    PostgresRolloutStore,
)
from twintrack.adapters.postgres.scorecard import PostgresScorecardStore
from twintrack.adapters.postgres.shadow import PostgresShadowStore
from twintrack.adapters.postgres.workers import PostgresWorkerRegistry, new_worker_id
from twintrack.config import ConfigError, Settings
from twintrack.core import transient
from twintrack.core.attempts import Attempts
from twintrack.core.audit import AuditTrail
from twintrack.core.bulk import BulkActions, BulkLimits, BulkStore
from twintrack.core.children_sweep import ChildSweeper
from twintrack.core.dead_executors import DeadExecutorSweeper
from twintrack.core.guard import Guard, GuardPolicy, GuardStore
from twintrack.core.live_rollout import LiveRollout, RolloutStateStore, Switches
from twintrack.core.ports import AdmissionProbe, CommandChannel, EventBus, TaskQueue
from twintrack.core.recovery import RecoverySweeper, SweepPolicy
from twintrack.core.recovery_ports import RecoveryStore, RerouteStore
from twintrack.core.rollout import reroute
from twintrack.core.run_host import RunHost
from twintrack.core.scorecard import ScorecardRefresh, ScorecardStore
from twintrack.core.service import ExecutionService, PolicySource, RoutingPolicy, StaticPolicy
from twintrack.core.shadow import ShadowPolicy, ShadowStore, ShadowSweep
from twintrack.core.stores import (
    ClaimStore,
    CounterStore,
    ExecutionStore,
    FlowStore,
    KeyStore,
    WorkerRegistry,
)
from twintrack.core.sweeper import Sweep, Sweeper
from twintrack.domain.execution import EventsBackend, Track
from twintrack.domain.limits import OwnerLimits
from twintrack.nodes.registry import NodeRegistry, default_registry

# Advisory-lock keys of the two sweeper loops (one leader each, cluster-wide).
RECOVERY_LOCK = 0x7477696E74726B  # "twintrk"
DBOS_RECOVERY_LOCK = 0x7477696E64626F73  # "twindbos"
GUARD_LOCK = 0x7477696E67756172  # "twinguar"
SHADOW_LOCK = 0x7477696E73686477  # "twinshdw"


@dataclass
class Container:
    """Everything a process needs, built but not started (`start` does the I/O)."""

    settings: Settings
    db_engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    flows: FlowStore
    executions: ExecutionStore
    keys: KeyStore
    counters: CounterStore
    workers: WorkerRegistry
    claims: ClaimStore
    registry: NodeRegistry
    queues: dict[Track, TaskQueue]
    buses: dict[EventsBackend, EventBus]
    commands: CommandChannel
    service: ExecutionService
    #: None when no Kafka adapter is in use (every Kafka port overridden, no broker set)
    kafka: KafkaConfig | None
    rollout_store: RolloutStateStore
    #: None with ROLLOUT_SOURCE=environment (the service then routes by the settings alone)
    rollout: LiveRollout | None = None
    _started: bool = field(default=False, repr=False)

    @property
    def guard_store(self) -> GuardStore:
        return PostgresGuardStore(self.sessions)

    @property
    def shadow_store(self) -> ShadowStore:
        return PostgresShadowStore(self.sessions)

    @property
    def scorecard_store(self) -> ScorecardStore:
        return PostgresScorecardStore(self.sessions)

    @property
    def recovery(self) -> RecoveryStore:
        """What recovery asks and changes (SQL over the executions, claims and commands)."""
        return PostgresRecoveryStore(self.sessions, PostgresExecutionStore(self.sessions))

    @property
    def audit(self) -> AuditTrail:
        return AuditTrail(PostgresRecoveryAudit(self.sessions), self.executions)

    @property
    def reroutes(self) -> RerouteStore:
        return PostgresRerouteStore(self.sessions)

    @property
    def bulk(self) -> BulkActions:
        """Stop or reroute by filter (admin API, CLI), operations kept in Postgres."""
        return bulk_actions(self.settings, self, PostgresBulkStore(self.sessions))

    async def start(self) -> None:
        if self._started:
            return
        if self.rollout is not None:
            await self.rollout.start()  # first: the routing in force before any request
        if self.kafka is not None and self._uses_kafka():
            await ensure_topics(self.kafka)
        for queue in self.queues.values():
            await queue.start()
        for bus in self.buses.values():
            await bus.start()
        await self.commands.start()
        for probe in self.service.admission.values():
            await probe.refusal()  # warm: the first create should not pay the first connect
        self._started = True

    def _uses_kafka(self) -> bool:
        return any(isinstance(q, KafkaTaskQueue) for q in self.queues.values()) or any(
            isinstance(b, KafkaEventBus) for b in self.buses.values()
        )

    async def close(self) -> None:
        for closer in (
            *((self.rollout.close,) if self.rollout is not None else ()),
            *(q.close for q in self.queues.values()),
            *(b.close for b in self.buses.values()),
            *(a.close for a in self.service.admission.values()),
            self.commands.close,
        ):
            try:
                await closer()
            except Exception:  # keep closing the rest
                import structlog

                structlog.get_logger().warning("close failed", exc_info=True)
        await self.db_engine.dispose()
        self._started = False

    async def ready(self) -> dict[str, bool]:
        """Whether each dependency answers now: for /readyz."""
        checks = {"database": False, "started": self._started}
        try:
            async with self.db_engine.connect() as conn:
                await conn.execute(text("select 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        return checks


async def migrate(url: str) -> None:
    """Our schema and DBOS's system tables (schema `dbos`): what `twintrack migrate` does.

    DBOS's own migrations run here too because the API process only uses a DBOS client,
    which never creates them. Lives here, where adapters meet, so neither knows the other."""
    from twintrack.adapters.dbos.runtime import blocking
    from twintrack.adapters.dbos.runtime import migrate as migrate_dbos
    from twintrack.adapters.postgres.migrations import upgrade_head

    await upgrade_head(url)
    await blocking(migrate_dbos, url)


class ServiceFactory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(
        self,
        *,
        db_engine: AsyncEngine | None = None,
        flows: FlowStore | None = None,
        executions: ExecutionStore | None = None,
        keys: KeyStore | None = None,
        counters: CounterStore | None = None,
        workers: WorkerRegistry | None = None,
        claims: ClaimStore | None = None,
        registry: NodeRegistry | None = None,
        queues: Mapping[Track, TaskQueue] | None = None,
        buses: Mapping[EventsBackend, EventBus] | None = None,
        commands: CommandChannel | None = None,
        admission: Mapping[Track, AdmissionProbe] | None = None,
    ) -> Container:
        """The production container; each argument given replaces that port's adapter.

        A given `db_engine` is used (and disposed on close) instead of one made from
        DATABASE_URL; KAFKA_BOOTSTRAP_SERVERS is needed only while a Kafka adapter is built."""
        s = self.settings
        transient.set_default_deadline(s.db_retry_deadline_s)
        if db_engine is None:
            if not s.database_url:
                raise ConfigError(
                    "DATABASE_URL is not set (or run `twintrack dev` for embedded ones)"
                )
            db_engine = create_engine(s.database_url, pool_size=20, max_overflow=20)
        needs_kafka = queues is None or buses is None
        if needs_kafka and not s.kafka_bootstrap_servers:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
        kafka = KafkaConfig.from_settings(s) if s.kafka_bootstrap_servers else None
        sessions = create_session_factory(db_engine)
        pg_executions = PostgresExecutionStore(sessions)
        flows = flows or PostgresFlowStore(sessions)
        executions = executions or pg_executions
        registry = registry or default_registry()
        probe: DbosAdmission | None = None
        if queues is None or buses is None:
            assert kafka is not None
            # Both tracks are always reachable: executions finish on the track they were
            # created on, whichever way the rollout flag points now.
            dbos = DbosConfig.from_settings(s)
            if queues is None:
                # One pool on the DBOS system database, for the enqueue and the admission check
                # (which disposes of it if it was made for them).
                probe = self.dbos_admission(db_engine)
                system = one_statement(create_session_factory(probe.engine))
                queues = {
                    Track.KAFKA: KafkaTaskQueue(kafka),
                    Track.DBOS: DbosTaskQueue(
                        dbos, park_s=s.start_signal_timeout_s + 3600, system_sessions=system
                    ),
                }
            if buses is None:
                buses = {
                    EventsBackend.KAFKA: KafkaEventBus(kafka, sessions),
                    EventsBackend.DBOS: DbosStreamEventBus(
                        dbos, sessions, max_event_bytes=s.max_event_bytes
                    ),
                }
        if commands is None:
            if not s.database_url:
                raise ConfigError("DATABASE_URL is not set (the command channel listens on it)")
            commands = PostgresCommandChannel(s.database_url, sessions)
        rollout_store = PostgresRolloutStore(sessions)
        rollout = None
        if s.rollout_source == "database":
            feed = PostgresRolloutFeed(s.database_url) if s.database_url else None
            rollout = live_rollout(s, rollout_store, feed)
        if admission is None:
            has_dbos = Track.DBOS in queues
            admission = {Track.DBOS: probe or self.dbos_admission(db_engine)} if has_dbos else {}
        service = compose_service(
            s,
            policy=rollout,
            flows=flows,
            executions=executions,
            registry=registry,
            queues=queues,
            buses=buses,
            commands=commands,
            admission=admission,
        )
        return Container(
            settings=s,
            db_engine=db_engine,
            sessions=sessions,
            flows=flows,
            executions=executions,
            keys=keys or PostgresKeyStore(sessions),
            counters=counters or PostgresCounterStore(sessions),
            workers=workers or PostgresWorkerRegistry(sessions),
            claims=claims or PostgresClaimStore(sessions, pg_executions),
            registry=registry,
            queues=service.queues,
            buses=service.buses,
            commands=commands,
            service=service,
            kafka=kafka,
            rollout_store=rollout_store,
            rollout=rollout,
        )

    def dbos_system_engine(self, db_engine: AsyncEngine) -> tuple[AsyncEngine, bool]:
        """Our own pool on the DBOS system database (the main engine when that is the same
        URL, so the same role is used), and whether it was made here (and must be disposed)."""
        s = self.settings
        system_url = s.dbos_system_database_url
        if system_url is None or system_url == s.database_url:
            return db_engine, False
        return create_engine(system_url, pool_size=2, max_overflow=2), True

    def dbos_admission(self, db_engine: AsyncEngine) -> DbosAdmission:
        """The DBOS admission check, on the system database DBOS's client uses."""
        s = self.settings
        engine, own = self.dbos_system_engine(db_engine)
        return DbosAdmission(
            engine,
            timeout_s=s.dbos_admission_timeout_s,
            cache_s=s.dbos_admission_cache_s,
            owns_engine=own,
        )

    @staticmethod
    def outage_errors() -> tuple[type[BaseException], ...]:
        """Errors meaning a dependency is down: the API answers 503, not 500."""
        import asyncpg
        from aiokafka.errors import (
            KafkaConnectionError,
            KafkaTimeoutError,
            NodeNotReadyError,
            RequestTimedOutError,
        )
        from sqlalchemy import exc as sa_exc

        # BrokerUnavailable (a bounded broker call ran out) is a TimeoutError: 503 already.
        # The hot statements run on asyncpg itself (adapters/postgres/db.py: driver): its own
        # connection errors as well as SQLAlchemy's wrappers.
        return (
            KafkaConnectionError,
            KafkaTimeoutError,
            NodeNotReadyError,
            RequestTimedOutError,
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
        )

    @staticmethod
    def store_errors() -> tuple[type[BaseException], ...]:
        """The database driver's errors: 503 when the transient rule says the connection was
        lost (core/transient.py), else 500."""
        import asyncpg
        from sqlalchemy import exc as sa_exc

        return (
            sa_exc.DBAPIError,
            sa_exc.TimeoutError,
            sa_exc.DisconnectionError,
            asyncpg.PostgresError,  # the hot statements on the driver (db.driver)
            asyncpg.InterfaceError,
        )

    def run_host(self, container: Container, worker_id: str | None = None) -> RunHost:
        """What every worker process runs claimed executions with, whatever their track.

        The worker id is also the DBOS executor id: DBOS_EXECUTOR_ID pins it (a stable id lets
        DBOS itself recover the worker's workflows when it restarts)."""
        worker_id = worker_id or self.settings.dbos_executor_id or new_worker_id()
        return RunHost(
            service=container.service,
            claims=container.claims,
            commands=container.commands,
            counters=container.counters,
            registry=container.workers,
            worker_id=worker_id,
            claim_ttl_s=self.settings.claim_ttl_s,
            failures=self.attempts(container),
        )

    def attempts(self, container: Container, max_attempts: int | None = None) -> Attempts:
        return Attempts(
            container.service,
            store=container.recovery,
            audit=container.audit,
            max_attempts=self.settings.max_attempts if max_attempts is None else max_attempts,
        )

    def kafka_worker(self, container: Container, host: RunHost) -> KafkaWorker:
        assert container.kafka is not None  # a Kafka worker is built with the Kafka adapters
        return KafkaWorker(
            config=container.kafka, host=host, concurrency=self.settings.worker_concurrency
        )

    def dbos_worker(self, container: Container, host: RunHost) -> DbosWorker:
        runtime = DbosRuntime(DbosConfig.from_settings(self.settings), executor_id=host.worker_id)
        return DbosWorker(runtime=runtime, host=host)

    def dead_executor_sweeper(
        self, container: Container, worker: DbosWorker
    ) -> DeadExecutorSweeper:
        s = self.settings
        queue = container.queues[Track.DBOS]
        assert isinstance(queue, DbosTaskQueue)  # the container's, started with it
        return DeadExecutorSweeper(
            store=container.recovery,
            audit=container.audit,
            registry=container.workers,
            workflows=DbosWorkflows(worker.runtime, queue),
            # two missed heartbeats (one every third of CLAIM_TTL_S), plus a second of slack
            silence_s=2 * s.claim_ttl_s / 3 + 1,
            repair_queued_s=s.dbos_repair_queued_s,
        )

    def sweeper(self, container: Container) -> RecoverySweeper:
        return recovery_sweeper(
            self.settings, container.service, container.recovery, container.audit
        )

    def child_sweeper(self, container: Container) -> ChildSweeper:
        return ChildSweeper(
            service=container.service,
            store=container.recovery,
            audit=container.audit,
            grace_s=self.settings.child_sweep_grace_s,
        )

    def recovery_loop(self, container: Container, sweeper: RecoverySweeper) -> Sweeper:
        """The cluster's recovery leader: expired claims, stale tasks, start timeouts, then
        orphaned children."""
        return Sweeper(
            leader=AdvisoryLeader(container.db_engine, RECOVERY_LOCK, "recovery sweeper"),
            interval_s=self.settings.recovery_sweep_interval_s,
            sweeps=[
                Sweep("recovery", sweeper.sweep),
                Sweep("children", self.child_sweeper(container).sweep),
            ],
        )

    def dead_executor_loop(self, container: Container, sweeper: DeadExecutorSweeper) -> Sweeper:
        """The DBOS workers' own leader: gone executors, then workflows nothing will run."""
        return Sweeper(
            leader=AdvisoryLeader(container.db_engine, DBOS_RECOVERY_LOCK, "dead-executor sweeper"),
            interval_s=self.settings.recovery_sweep_interval_s,
            sweeps=[
                Sweep("dead executors", sweeper.sweep),
                Sweep("repair queued", sweeper.repair_queued),
            ],
        )

    def guard_loop(self, container: Container) -> Sweeper:
        """The cluster's one rollout guard (GUARD_ENABLED), on its own leader."""
        return Sweeper(
            leader=AdvisoryLeader(container.db_engine, GUARD_LOCK, "rollout guard"),
            interval_s=self.settings.guard_interval_s,
            sweeps=[Sweep("rollout guard", rollout_guard(self.settings, container).check)],
        )

    def shadow_loop(self, container: Container) -> Sweeper:
        """The cluster's one shadow sweep (schedule, compare) and scorecard metrics refresh."""
        s = self.settings
        refresh = ScorecardRefresh(
            container.scorecard_store,
            window_s=s.scorecard_window_s,
            refresh_s=s.scorecard_refresh_s,
        )
        return Sweeper(
            leader=AdvisoryLeader(container.db_engine, SHADOW_LOCK, "shadow sweep"),
            interval_s=s.shadow_interval_s,
            sweeps=[
                Sweep("shadow runs", shadow_sweep(s, container).sweep),
                Sweep("scorecard", refresh.sweep),
            ],
            on_lost=refresh.withdraw,
        )


def initial_switches(settings: Settings) -> Switches:
    """The environment's rollout: the first state, and the override (ROLLOUT_SOURCE)."""
    s = settings
    return Switches(
        s.enable_dbos_execution,
        s.dbos_rollout_percent,
        s.execution_events_backend,
        shadow_percent=s.shadow_percent,
        fallback_to_kafka=s.dbos_fallback_to_kafka,
    )


def live_rollout(
    settings: Settings, store: RolloutStateStore, feed: Any | None = None
) -> LiveRollout:
    return LiveRollout(
        store,
        feed,
        initial=initial_switches(settings),
        max_depth=settings.execution_max_depth,
        refresh_s=settings.rollout_refresh_s,
    )


def guard_policy(settings: Settings) -> GuardPolicy:
    s = settings
    return GuardPolicy(
        window_s=s.guard_window_s,
        initial_delay_s=s.guard_initial_delay_s,
        min_samples=s.guard_min_samples,
        max_error_rate_delta=s.guard_max_error_rate_delta,
        max_p99_ratio=s.guard_max_p99_ratio,
        stuck_after_s=s.guard_stuck_after_s,
        max_stuck=s.guard_max_stuck,
        failures_to_rollback=s.guard_failures_to_rollback,
        reroute_unstarted=s.guard_reroute_unstarted,
        max_mismatch_rate=s.guard_max_mismatch_rate,
        min_shadow_samples=s.guard_min_shadow_samples,
    )


def rollout_guard(settings: Settings, container: Container | MemoryContainer) -> Guard:
    """The guard over a container's stores; its optional reroute is core/rollout.reroute."""

    async def back_to_kafka() -> object:
        return await reroute(container.service, container.reroutes, container.audit, to=Track.KAFKA)

    return Guard(
        store=container.guard_store,
        rollout=container.rollout_store,
        policy=guard_policy(settings),
        reroute=back_to_kafka,
        shadows=container.shadow_store,
    )


def shadow_sweep(settings: Settings, container: Container | MemoryContainer) -> ShadowSweep:
    """The shadow sweep over a container's stores; SHADOW_PERCENT is read live each round."""
    s = settings

    async def percent() -> int:
        if s.rollout_source == "environment":  # the override: this process's settings rule
            return s.shadow_percent
        state = await container.rollout_store.load()
        return s.shadow_percent if state is None else state.switches.shadow_percent

    return ShadowSweep(
        service=container.service,
        store=container.shadow_store,
        percent=percent,
        policy=ShadowPolicy(
            max_running=s.shadow_max_running,
            ledger_size=s.shadow_ledger_size,
            lookback_s=s.shadow_lookback_s,
            shed_queued=s.shadow_shed_queued,
        ),
    )


def bulk_actions(
    settings: Settings, container: Container | MemoryContainer, store: BulkStore
) -> BulkActions:
    return BulkActions(
        container.service,
        store,
        reroutes=container.reroutes,
        audit=container.audit,
        limits=BulkLimits(max_ids=settings.bulk_max_ids, page_size=settings.bulk_page_size),
    )


def recovery_sweeper(
    settings: Settings, service: ExecutionService, store: RecoveryStore, audit: AuditTrail
) -> RecoverySweeper:
    s = settings
    return RecoverySweeper(
        service=service,
        store=store,
        audit=audit,
        kafka_queue=service.queues.get(Track.KAFKA),
        policy=SweepPolicy(
            interval_s=s.recovery_sweep_interval_s,
            max_attempts=s.max_attempts,
            start_timeout_s=s.start_signal_timeout_s,
        ),
    )


def compose_service(
    settings: Settings,
    *,
    flows: FlowStore,
    executions: ExecutionStore,
    registry: NodeRegistry,
    queues: Mapping[Track, TaskQueue],
    buses: Mapping[EventsBackend, EventBus],
    commands: CommandChannel,
    policy: PolicySource | None = None,
    admission: Mapping[Track, AdmissionProbe] | None = None,
) -> ExecutionService:
    """The service on the given ports, with the routing and limits of `settings`; `policy`
    (the live rollout) replaces the settings' routing when given."""
    s = settings
    return ExecutionService(
        flows=flows,
        executions=executions,
        registry=registry,
        queues=queues,
        buses=buses,
        commands=commands,
        policy=policy
        or StaticPolicy(
            RoutingPolicy(
                enable_dbos=s.enable_dbos_execution,
                rollout_percent=s.dbos_rollout_percent,
                events_backend=s.execution_events_backend,
                max_depth=s.execution_max_depth,
                fallback_to_kafka=s.dbos_fallback_to_kafka,
            )
        ),
        limits=OwnerLimits(
            max_executions_per_tree=s.max_executions_per_tree,
            max_running_executions_per_owner=s.max_running_executions_per_owner,
        ),
        terminal_row_wait_s=s.terminal_row_wait_s,
        idempotency_key_ttl_s=s.idempotency_key_ttl_s,
        admission=admission,
    )


@dataclass
class MemoryContainer:
    """A whole service on adapters/memory (`in_memory()`): the same ports as a `Container`,
    typed as the memory adapters so a test can look inside (what was enqueued, published,
    commanded, audited). Satisfies the API's `ApiContainer`."""

    settings: Settings
    stores: MemoryStores
    ports: MemoryPorts
    registry: NodeRegistry
    service: ExecutionService
    rollout_store: MemoryRolloutStore
    rollout: LiveRollout
    _started: bool = field(default=False, repr=False)
    recovery: MemoryRecovery = field(init=False)
    guard_store: MemoryGuardStore = field(init=False)
    shadow_store: MemoryShadowStore = field(init=False)
    scorecard_store: MemoryScorecardStore = field(init=False)
    bulk_store: MemoryBulkStore = field(init=False)

    def __post_init__(self) -> None:
        self.recovery = MemoryRecovery(self.stores)
        self.guard_store = MemoryGuardStore(self.stores.executions)
        self.shadow_store = MemoryShadowStore(self.stores.executions)
        self.scorecard_store = MemoryScorecardStore(
            self.stores.executions, self.recovery.audit, self.shadow_store
        )
        self.bulk_store = MemoryBulkStore(self.stores.executions, self.recovery.reroutes.held)

    @property
    def bulk(self) -> BulkActions:
        return bulk_actions(self.settings, self, self.bulk_store)

    @property
    def reroutes(self) -> RerouteStore:
        return self.recovery.reroutes

    @property
    def audit(self) -> AuditTrail:
        return self.recovery.trail

    def attempts(self, max_attempts: int | None = None) -> Attempts:
        s = self.settings
        return Attempts(
            self.service,
            store=self.recovery.store,
            audit=self.recovery.trail,
            max_attempts=s.max_attempts if max_attempts is None else max_attempts,
        )

    def sweeper(self) -> RecoverySweeper:
        return recovery_sweeper(self.settings, self.service, self.recovery.store, self.audit)

    @property
    def flows(self) -> FlowStore:
        return self.stores.flows

    @property
    def executions(self) -> ExecutionStore:
        return self.stores.executions

    @property
    def keys(self) -> KeyStore:
        return self.stores.keys

    @property
    def counters(self) -> CounterStore:
        return self.stores.counters

    @property
    def workers(self) -> WorkerRegistry:
        return self.stores.workers

    @property
    def claims(self) -> ClaimStore:
        return self.stores.claims

    @property
    def commands(self) -> CommandChannel:
        return self.ports.commands

    async def start(self) -> None:
        await self.rollout.start()
        self._started = True

    async def close(self) -> None:
        await self.rollout.close()
        self._started = False

    async def ready(self) -> dict[str, bool]:
        return {"database": True, "started": self._started}

    def run_host(self, worker_id: str = "worker-1", **overrides: Any) -> RunHost:
        """A run host on these stores, its failed runs recorded in the memory audit."""
        s = self.settings
        options: dict[str, Any] = {
            "service": self.service,
            "claims": self.stores.claims,
            "commands": self.ports.commands,
            "counters": self.stores.counters,
            "registry": self.stores.workers,
            "worker_id": worker_id,
            "claim_ttl_s": s.claim_ttl_s,
            "failures": self.attempts(),
        }
        return RunHost(**{**options, **overrides})


def in_memory(
    settings: Settings | None = None,
    *,
    registry: NodeRegistry | None = None,
    ports: MemoryPorts | None = None,
    stores: MemoryStores | None = None,
) -> MemoryContainer:
    """The service on memory adapters: no server, no DATABASE_URL. `settings` default to
    Settings' defaults (whatever the environment says about servers is ignored)."""
    settings = settings or Settings(database_url=None, kafka_bootstrap_servers=None)
    if ports is None:
        ports = MemoryPorts(
            buses={
                b: MemoryEventBus(b, max_event_bytes=settings.max_event_bytes)
                for b in EventsBackend
            },
            commands=stores.commands if stores is not None else MemoryCommandChannel(),
        )
    if stores is None:
        stores = MemoryStores(commands=ports.commands)
    registry = registry or default_registry()
    rollout_store = MemoryRolloutStore()
    rollout = live_rollout(settings, rollout_store, rollout_store)
    service = compose_service(
        settings,
        policy=rollout,
        flows=stores.flows,
        executions=stores.executions,
        registry=registry,
        queues=ports.task_queues(),
        buses=ports.event_buses(),
        commands=ports.command_channel(),
        admission=ports.admission_probes(),
    )
    return MemoryContainer(settings, stores, ports, registry, service, rollout_store, rollout)
