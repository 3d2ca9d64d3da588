"""A real PostgreSQL for tests and benchmarks, from the binaries the `pgserver` wheel embeds.

``with PostgresServer() as server:`` runs ``initdb`` in a temporary folder
and starts ``postgres`` listening on 127.0.0.1 at a free port, password
login required over TCP (so a wrong password is refused, as in production).
``server.create_database()`` gives the URL of a new, empty database;
``server.url(database, user, password)`` builds others. ``halt()`` and
``resume()`` restart it on the same data and port, as an operator's restart
would (every session is cut). Stopped (fast shutdown, killed after a
timeout) and its folder deleted on exit.

Why not ``pgserver.get_server()``: it listens on a Unix socket only, trusts
every login, and keeps state (a lock file, atexit hooks) outside the test's
folder. Only its binaries, and its helpers for running them as root, are used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg

from tests.support.local_server import free_port

#: How long start-up (initdb + postgres ready) and shutdown may take.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
#: PostgreSQL refuses to run as root; as root, the server runs as this user.
SYSTEM_USER = "pgserver"


class ServerError(Exception):
    """The server could not be started; the message says why."""


class PostgresServer:
    """One PostgreSQL server in a temporary folder (see the module docstring).

    `durable=False` (the tests' default) turns fsync off: a test never
    survives a power cut, and it makes each commit cheaper. Benchmarks pass
    ``durable=True`` to measure what production would pay.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.password = secrets.token_hex(16)
        self.host = "127.0.0.1"
        self.port = 0
        self.folder: Path | None = None
        self._running = False
        self._user: str | None = None
        self._databases = itertools.count(1)
        self._lock = threading.Lock()
        #: Seconds the last start took (initdb + ready), for reports.
        self.start_seconds = 0.0

    # -- starting and stopping ------------------------------------------------

    def start(self) -> PostgresServer:
        """Initialise a cluster and start the server; raise :class:`ServerError` if it cannot."""
        started = time.monotonic()
        if not _binary("postgres").exists():
            raise ServerError(f"no PostgreSQL at {_binary('postgres')}: pip install -e '.[test]'")
        self.folder = Path(tempfile.mkdtemp(prefix="yielded-pg-"))
        try:
            self._user = _system_user(self.folder)
            self._initdb()
            self._launch()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _initdb(self) -> None:
        assert self.folder is not None
        user = self._user
        password_file = self.folder / "password"
        password_file.write_text(self.password)
        if user is not None:
            shutil.chown(password_file, user)
        self._run(
            "initdb",
            "--pgdata", str(self.folder / "data"),
            "--username", "postgres",
            f"--pwfile={password_file}",
            "--auth-local=trust",  # the socket is in the test's own folder
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
            user=user,
        )

    def _launch(self) -> None:
        """Start postgres on a free port (tried again if another process took it first).

        Through ``pg_ctl``, so the server is not a child of this process: tests
        that check they leave no child process behind are not misled by it.
        """
        for attempt in range(5):
            self.port = free_port(self.host)
            try:
                self._pg_ctl_start()
            except ServerError:
                if "could not bind" not in self.log_tail() or attempt == 4:
                    raise ServerError(f"PostgreSQL did not start: {self.log_tail()}") from None
            else:
                self._running = True
                return

    def _pg_ctl_start(self) -> None:
        assert self.folder is not None
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.folder),
            "fsync": "on" if self.durable else "off",
            "max_connections": "200",
        }
        self._pg_ctl(
            "start",
            "--wait", f"--timeout={START_TIMEOUT:.0f}",
            f"--log={self.folder / 'postgres.log'}",
            "-o", " ".join(f"-c {name}={value}" for name, value in settings.items()),
        )

    def halt(self) -> None:
        """Stop the server as a restart does (every session is cut); data and port are kept."""
        assert self._running, "the server is not running"
        self._pg_ctl("stop", "--wait", f"--timeout={STOP_TIMEOUT:.0f}", "--mode=fast")
        self._running = False

    def resume(self) -> None:
        """Start the server :meth:`halt` stopped again, on the same data and port."""
        assert not self._running and self.folder is not None, "the server is not halted"
        try:
            self._pg_ctl_start()
        except ServerError:
            raise ServerError(f"PostgreSQL did not start again: {self.log_tail()}") from None
        self._running = True

    def stop(self) -> None:
        """Stop the server (fast shutdown, then kill) and delete its folder."""
        if self._running:
            self._running = False
            try:
                self._pg_ctl("stop", "--wait", f"--timeout={STOP_TIMEOUT:.0f}", "--mode=fast")
            except (ServerError, subprocess.TimeoutExpired):
                self._kill()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _kill(self) -> None:
        """The last resort: kill the postmaster named in its pid file."""
        assert self.folder is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)

    def _pg_ctl(self, action: str, *args: str) -> None:
        assert self.folder is not None
        self._run("pg_ctl", action, "--pgdata", str(self.folder / "data"), *args, user=self._user)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # -- using it ---------------------------------------------------------------

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        """A ``postgresql://`` URL for `database` as `user` (the superuser by default)."""
        secret = self.password if password is None else password
        return (
            f"postgresql://{quote(user, safe='')}:{quote(secret, safe='')}"
            f"@{self.host}:{self.port}/{quote(database, safe='')}"
        )

    def create_database(self) -> str:
        """A new empty database; returns its URL (the superuser's)."""
        with self._lock:
            name = f"test_{next(self._databases)}"
        self.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run `sql` as the superuser, outside a transaction (CREATE DATABASE needs that)."""
        with psycopg.connect(self.url(database), autocommit=True) as connection:
            connection.execute(sql.encode())

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log, on one line."""
        if self.folder is None or not (self.folder / "postgres.log").exists():
            return "(no log)"
        text = (self.folder / "postgres.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def _run(self, program: str, *args: str, user: str | None) -> None:
        # Output to a file, not a pipe: the server pg_ctl starts inherits it,
        # and a pipe would then never reach end of file.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(
                [str(_binary(program)), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user,
                timeout=START_TIMEOUT,
                check=False,
            )
            output.seek(0)
            why = output.read().decode(errors="replace").strip().splitlines()
        if result.returncode != 0:
            raise ServerError(f"{program} failed: {' | '.join(why[-3:])}")


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released), for an unreachable server."""
    return free_port(host)


def _binary(program: str) -> Path:
    # Found without importing pgserver: importing it sets up its own machinery.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("pgserver is not installed: pip install -e '.[test]'")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / program


def _system_user(folder: Path) -> str | None:
    """As root: the user the server runs as, with `folder` and the binaries open to it."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:  # once per machine
        adding = ["useradd", "--no-create-home", SYSTEM_USER]
        # Not checked: test workers starting at once race to add it, and all but
        # one are told it exists. Whether it exists now is what counts.
        result = subprocess.run(adding, capture_output=True, text=True, check=False)
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise ServerError(
                f"cannot add the user {SYSTEM_USER}: {result.stderr.strip()}"
            ) from None
    installed = _binary("postgres").parent.parent
    for path in (installed, folder):
        _open_path_to_others(path)
    for root, folders, files in os.walk(installed):
        for name in folders + files:
            _add_mode(Path(root) / name, _OTHERS_READ | (_OTHERS_RUN if name in folders else 0))
        for name in files:
            if Path(root).name == "bin":
                _add_mode(Path(root) / name, _OTHERS_RUN)
    shutil.chown(folder, SYSTEM_USER, SYSTEM_USER)
    return SYSTEM_USER


_OTHERS_READ = stat.S_IRGRP | stat.S_IROTH
_OTHERS_RUN = stat.S_IXGRP | stat.S_IXOTH


def _open_path_to_others(path: Path) -> None:
    """Let other users traverse every folder above `path` (as pgserver itself does)."""
    for parent in [path, *path.parents]:
        _add_mode(parent, _OTHERS_READ | _OTHERS_RUN)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.lstat().st_mode
    if not stat.S_ISLNK(mode) and mode & bits != bits:
        path.chmod(mode | bits)
