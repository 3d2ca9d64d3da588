"""Several instances on PostgreSQL beside one on SQLite: throughput, CPU, latency, failover.

Run from the repository root::

    python bench/scale_bench.py            # 200 users x 2 cities, 5 failovers
    python bench/scale_bench.py --quick    # 50 users x 1 city, 3 failovers

One run, side by side, on this machine, all in webhook mode behind the same
test round-robin proxy (``tests/support/round_robin.py``):

* ``sqlite x1``: one ``weather-bot --state <file>``;
* ``postgres x1``: one ``weather-bot --state postgresql://...`` (single instance);
* ``shared x1/x2/x3``: 1, 2, 3 ``weather-bot --shared`` on one PostgreSQL.

The users and their checks are ``bench/telegram_bench.py``'s (every user's
whole transcript must be right, or the run fails). PostgreSQL is the tests'
``pgserver`` one, durable (fsync on). Measured: conversations/s, CPU ms per
update summed over the instances and per instance (``/proc``), reply latency
p50/p99, and, with 3 shared instances, the failover time after ``kill -9``:
from the kill until every one of the users who wrote right after it was
answered (their update may go to any instance; those of the dead one's
shards wait for a survivor to take them), median of ``--kills`` kills (the
killed instance is started again between kills). The proxy, the fakes and
PostgreSQL run on the same cores as the bots: compare the columns, not the
absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import telegram_bench as tb  # noqa: E402
from flows.weather import CITY_PROMPT  # noqa: E402
from tests.support.bot_cluster import BotCluster  # noqa: E402
from tests.support.openmeteo_server import FakeOpenMeteo  # noqa: E402
from tests.support.postgres_server import PostgresServer  # noqa: E402

#: (label, instances, state kind)
SETUPS = [
    ("sqlite x1", 1, "sqlite"),
    ("postgres x1", 1, "postgres"),
    ("shared x1", 1, "shared"),
    ("shared x2", 2, "shared"),
    ("shared x3", 3, "shared"),
]
#: The default rebalancing interval, as an operator runs it.
INTERVAL = 2.0


@dataclass
class Run:
    label: str
    instances: int
    users: int
    updates: int
    seconds: float
    latencies: list[float]
    cpu: list[float]  # per instance, seconds

    @property
    def rate(self) -> float:
        return self.users / self.seconds

    def cpu_ms(self) -> float:
        return 1000 * sum(self.cpu) / self.updates


def _cluster(
    telegram: tb.BenchTelegram, openmeteo: FakeOpenMeteo, server: PostgresServer,
    workdir: Path, count: int, kind: str,
) -> BotCluster:  # fmt: skip
    state = str(workdir / "bench.sqlite3") if kind == "sqlite" else server.create_database()
    return BotCluster(telegram, state, workdir, count, interval=INTERVAL,
                      env=tb.bot_environment(telegram, openmeteo),
                      shared=kind == "shared")  # fmt: skip


def load_run(label: str, count: int, kind: str, users: int, rounds: int,
             server: PostgresServer, workdir: Path) -> Run:  # fmt: skip
    """The whole dialogue for `users` users against `count` instances of `kind`."""
    workdir.mkdir(parents=True)
    telegram = tb.BenchTelegram()
    with telegram, FakeOpenMeteo() as openmeteo:
        crowd = tb.Crowd(telegram, tb.make_users(openmeteo, users, rounds))
        with _cluster(telegram, openmeteo, server, workdir, count, kind) as cluster:
            cluster.start_all()
            time.sleep(INTERVAL + 0.5)  # shards settled: start-up is not the workload
            pids = [p.pid for p in cluster.processes if p is not None]
            before = [sum(tb.cpu_seconds(pid)) for pid in pids]
            telegram.listener = crowd.on_sent
            crowd.start()
            if not crowd.done.wait(tb.RUN_TIMEOUT + users):
                raise RuntimeError(f"{label}: unfinished, e.g. {crowd.stuck()[:3]}")
            tb._wait(lambda: time.monotonic() - telegram.last_call >= tb.QUIET, 30, "quiet")
            cpu = [sum(tb.cpu_seconds(pid)) - b for pid, b in zip(pids, before, strict=True)]
            telegram.listener = None
        wrong = [u.chat_id for u in crowd.users if telegram.texts(u.chat_id) != u.transcript()]
        if wrong:
            raise RuntimeError(f"{label}: wrong transcripts for {len(wrong)} users: {wrong[:5]}")
    return Run(label, count, users, crowd.pushed, crowd.finished_at - crowd.started_at,
               crowd.latencies, cpu)  # fmt: skip


def failovers(kills: int, users: int, server: PostgresServer, workdir: Path) -> list[float]:
    """Seconds from each ``kill -9`` until all `users` who wrote right after were answered."""
    workdir.mkdir(parents=True)
    times: list[float] = []
    telegram = tb.BenchTelegram()
    with telegram, FakeOpenMeteo() as openmeteo, _cluster(
        telegram, openmeteo, server, workdir, 3, "shared"
    ) as cluster:
        cluster.start_all()
        for kill in range(kills):
            time.sleep(2 * INTERVAL + 0.5)  # balanced again
            victim = kill % 3
            chats = [100_000 * (kill + 1) + n for n in range(users)]
            killed_at = cluster.kill(victim)
            telegram.send_texts((chat, "/start") for chat in chats)
            for chat in chats:
                telegram.wait_text(chat, CITY_PROMPT, timeout=60)
            times.append(time.monotonic() - killed_at)
            cluster.start(victim)
    return times


def report(runs: list[Run], failover: list[float], users: int, rounds: int) -> Iterator[str]:
    yield (f"scale bench: {users} users x {rounds} cities, {os.cpu_count()} CPUs, "
           f"Python {sys.version.split()[0]}, PostgreSQL durable, webhook mode behind a "
           "round-robin proxy")  # fmt: skip
    yield ""
    yield (f"{'setup':<13} {'conv/s':>7} {'CPU ms/upd':>10} {'per instance CPU s':>22} "
           f"{'p50 ms':>7} {'p99 ms':>7}")  # fmt: skip
    for run in runs:
        per = " ".join(f"{c:.1f}" for c in run.cpu)
        yield (f"{run.label:<13} {run.rate:>7.1f} {run.cpu_ms():>10.2f} {per:>22} "
               f"{1000 * tb.percentile(run.latencies, 50):>7.0f} "
               f"{1000 * tb.percentile(run.latencies, 99):>7.0f}")  # fmt: skip
    yield ""
    yield (f"failover after kill -9 (3 shared instances, --shard-interval {INTERVAL:g}): "
           f"median {statistics.median(failover):.2f} s, min {min(failover):.2f} s, "
           f"max {max(failover):.2f} s over {len(failover)} kills")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50 users x 1 city, 3 kills")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.rounds, args.kills = 50, 1, 3
    with tempfile.TemporaryDirectory() as folder, PostgresServer(durable=True) as server:
        workdir = Path(folder)
        runs = [
            load_run(label, count, kind, args.users, args.rounds, server, workdir / str(n))
            for n, (label, count, kind) in enumerate(SETUPS)
        ]
        failover = failovers(args.kills, 30, server, workdir / "failover")
    for line in report(runs, failover, args.users, args.rounds):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
