"""More than one engine process, all sharing one load of the model and the index.

Measured before: one engine thread did all the work (200 concurrent checks at 22.9 checks/s,
p99 8.6 s on 2 cores, a 0.88 MB PNG holding everyone up for 7 s). Now:

- a *zygote* process is forked first, while the server is still one thread; it loads the
  index and builds its hash tables, closes its database connection, and then only forks
  engines when asked;
- each *engine* is forked from the zygote, so its index arrays are the zygote's pages,
  shared copy-on-write (the kernel copies nothing that is only read); it opens its own
  database connection, builds the model (15 MB of weights, a fraction of a second) with its
  share of the CPUs as torch threads, and serves one request at a time over a socket;
- the HTTP process hands each check to the first idle engine (one queue, so a slow check
  never holds up a free engine) and answers everything else itself.

The model is not shared because torch must not be imported before a fork. Measured here:
a child of a process that built the model hangs forever at its first run with 2 threads
(GNU OpenMP's pool does not survive a fork), and where the parent only imported torch, or
used it with one thread, the child's runs with 2 threads took 0.27 to 1.4 s instead of
0.013 s. The zygote never imports torch; each engine starts it fresh.

An engine that dies (a decoder crash, the OOM killer) costs its one request a 503 and is
replaced by a fresh fork of the zygote; forking from the zygote rather than from the HTTP
process matters, since that one runs threads, and a fork of a threaded process may inherit a
lock some other thread held. When the HTTP process goes, the sockets close and the zygote and
the engines exit by themselves; they ignore Ctrl-C, which is the HTTP process's to handle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from detector.errors import CopyscanError
from detector.intake.workers import usable_cpus
from detector.server.errors import Busy, ClientError, EngineError
from detector.server.limits import StorageQuota
from detector.server.service import CheckService, Upload
from detector.stage2.embedding import cpu_threads

LOG = logging.getLogger("copyscan.serve")
START_TIMEOUT_S = 600.0  # loading the model and a large index may take minutes


@dataclass(frozen=True)
class EngineCount:
    """How many engine processes, and how many torch threads each (their product is the
    CPUs this process may use, at least one each)."""

    engines: int
    threads: int

    @classmethod
    def choose(cls, workers: int) -> EngineCount:
        """``workers`` engines (0: one per usable CPU), the CPUs shared out between them."""
        cpus = usable_cpus()
        engines = workers if workers > 0 else cpus
        return cls(engines, max(1, cpus // engines))


class _Engine:
    """The HTTP process's end of one engine: its socket and process id."""

    def __init__(self, conn: Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.in_step = True  # False between sending a request and reading its answer

    def exchange(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        self.in_step = False
        self.conn.send(request)
        reply = self.conn.recv()
        self.in_step = True
        return tuple(reply)


class EnginePool:
    """The engines of one server. :meth:`start` forks them (blocking, before the event loop
    runs); :meth:`check` and :meth:`add` are awaited by the app; :meth:`close` ends them."""

    def __init__(self, control: socket.socket, zygote: int, count: EngineCount) -> None:
        self.control = control
        self.zygote = zygote
        self.count = count
        self.served = 0
        self._spawn_lock = threading.Lock()
        self._idle: asyncio.Queue[_Engine] = asyncio.Queue()
        self._all: dict[int, _Engine] = {}

    @classmethod
    def start(
        cls,
        db: str | Path,
        overrides: dict[str, Any] | None,
        base: dict[str, Any] | None,
        count: EngineCount,
        quota: StorageQuota | None = None,
    ) -> EnginePool:
        """Fork the zygote (it loads the model and the index), then ``count.engines`` engines.
        Call it while this process runs no other thread. Raises :class:`EngineError` (or the
        zygote's own error, e.g. a model that cannot be loaded) when they cannot start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _zygote(theirs, db, overrides, base, quota, count.threads)
        theirs.close()
        pool = cls(ours, pid, count)
        try:
            if not _readable(ours, START_TIMEOUT_S):
                raise EngineError(f"the engines did not load within {START_TIMEOUT_S:.0f} s")
            status = json.loads(ours.recv(65536) or b'{"error": "the engine loader stopped"}')
            if "error" in status:
                raise EngineError(status["error"])
            starting = [pool._ask() for _ in range(count.engines)]  # they load their models at once
            for conn in starting:
                pool._add_idle(_ready(conn))
        except BaseException:
            pool.close()
            raise
        return pool

    @property
    def pids(self) -> list[int]:
        """Process ids of the live engines."""
        return sorted(self._all)

    async def check(self, upload: Upload, mode: str, changes: dict[str, Any], record: bool) -> dict[str, Any]:
        """:meth:`CheckService.check` in the first idle engine."""
        return await self._call(("check", upload, mode, changes, record))

    async def add(self, upload: Upload, owner: str | None, external_id: str | None) -> dict[str, Any]:
        """:meth:`CheckService.add` in the first idle engine."""
        return await self._call(("add", upload, owner, external_id))

    async def _call(self, request: tuple[Any, ...]) -> dict[str, Any]:
        if not self._all:
            raise Busy("no check engine is running (see the server log)")
        engine = await self._idle.get()
        try:
            reply = await run_in_threadpool(engine.exchange, request)
            if request[0] == "check":
                self.served += 1
        except (EOFError, OSError) as e:
            LOG.error("engine %d stopped while serving a request: starting another", engine.pid)
            self._drop(engine)
            try:
                self._add_idle(await run_in_threadpool(self._spawn))
            except (EngineError, OSError, EOFError) as spawn_error:
                LOG.error("could not start another engine: %s", spawn_error)
            raise Busy("the check engine stopped while serving this request; retry") from e
        finally:
            if engine.in_step and engine.pid in self._all:
                self._idle.put_nowait(engine)
            elif engine.pid in self._all:  # cancelled mid-request: its next answer is not ours
                self._drop(engine)
        return _unwrap(reply)

    def _spawn(self) -> _Engine:
        """One more engine, ready."""
        return _ready(self._ask())

    def _ask(self) -> Connection:
        """Ask the zygote for one more engine: our end of its socket."""
        ours, theirs = socket.socketpair()
        with self._spawn_lock:
            try:
                socket.send_fds(self.control, [b"spawn"], [theirs.fileno()])
            finally:
                theirs.close()
        return Connection(ours.detach())

    def _add_idle(self, engine: _Engine) -> None:
        self._all[engine.pid] = engine
        self._idle.put_nowait(engine)

    def _drop(self, engine: _Engine) -> None:
        self._all.pop(engine.pid, None)
        engine.conn.close()

    def close(self) -> None:
        """End the engines and the zygote (they exit when their sockets close)."""
        for engine in list(self._all.values()):
            self._drop(engine)
        self.control.close()
        try:
            os.waitpid(self.zygote, 0)
        except ChildProcessError:
            pass


def _ready(conn: Connection) -> _Engine:
    """Wait for a new engine to say it is ready (it builds its model first)."""
    try:
        if not conn.poll(START_TIMEOUT_S):
            raise EngineError("an engine did not start")
        _, pid = conn.recv()
    except (EOFError, OSError) as e:
        conn.close()
        raise EngineError("an engine stopped while starting (see the log above)") from e
    except EngineError:
        conn.close()
        raise
    return _Engine(conn, int(pid))


def _unwrap(reply: tuple[Any, ...]) -> dict[str, Any]:
    kind = reply[0]
    if kind == "ok":
        return dict(reply[1])
    if kind == "client":
        status, message, extra, headers = reply[1:]
        raise ClientError(status, message, extra, headers)
    if kind == "error":
        raise CopyscanError(reply[1])
    raise RuntimeError(f"the engine failed: {reply[1]} (see the server log)")


def _readable(sock: socket.socket, timeout: float) -> bool:
    import select

    return bool(select.select([sock], [], [], timeout)[0])


def _zygote(
    control: socket.socket,
    db: str | Path,
    overrides: dict[str, Any] | None,
    base: dict[str, Any] | None,
    quota: StorageQuota | None,
    threads: int,
) -> None:
    """The zygote's life (never returns): load, report, then fork engines on request."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            service = CheckService.open(db, overrides, base, quota=quota)
            service.load_index()
            service.store.close()
            if "torch" in sys.modules:  # something loaded it after all: one thread is safe
                LOG.warning("torch was loaded before the engines were forked: one thread each")
                threads = 1
        except CopyscanError as e:
            control.send(json.dumps({"error": str(e)}).encode())
            code = 1
            return
        control.send(b'{"ready": true}')
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # engines are reaped by the kernel
        while True:
            message, fds, _, _ = socket.recv_fds(control, 64, 1)
            if not message or not fds:
                return  # the HTTP process went away
            pid = os.fork()
            if pid == 0:
                control.close()
                _engine(service, fds[0], threads)
            for fd in fds:
                os.close(fd)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _engine(service: CheckService, fd: int, threads: int) -> None:
    """An engine's life (never returns): answer requests until the socket closes."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        conn = Connection(fd)
        cpu_threads(threads)
        service.reopen()
        service.load_model()
        conn.send(("ready", os.getpid()))
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            conn.send(_serve(service, request))
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _serve(service: CheckService, request: tuple[Any, ...]) -> tuple[Any, ...]:
    kind, *args = request
    try:
        if kind == "check":
            return ("ok", service.check(*args))
        if kind == "add":
            return ("ok", service.add(*args))
        return ("internal", f"unknown request {kind!r}")
    except ClientError as e:
        return ("client", e.status, str(e), e.extra, e.headers)
    except CopyscanError as e:
        return ("error", str(e))
    except Exception as e:
        LOG.exception("engine %d: %s", os.getpid(), type(e).__name__)
        return ("internal", type(e).__name__)
