"""The front of the pipeline (:func:`detector.intake.prepare.prepare_bytes`: decode, codes, CNN
input, stage-3 grey) in worker processes, while this process searches, embeds and writes.

:func:`prepared_batches` yields the prepared batches of a list of paths, in order. This
process reads each file and hashes its content (so content already known is never sent to
a worker, let alone decoded), then hands the bytes to a pool of workers and reads ahead: up
to :data:`_AHEAD` batches (and :data:`_AHEAD_BYTES` of file content) are being decoded while
the caller works on the current one. With one job, or a job too small to pay for starting
workers, everything runs here, batch by batch, as :func:`detector.intake.prepare.prepare_batch`.

A worker that dies (a decoder crashing on hostile bytes, the kernel's OOM killer) breaks
the pool; the pool is started again and the images it held are decoded again one at a time,
so the one that kills a worker gets an error of its own and the run goes on. Workers that
cannot run at all (three images in a row) are given up for decoding in this process.

The library starts no workers unless ``Settings.jobs`` asks for them (the command line
does): Python starts a worker by re-importing the calling script, which must then guard its
work with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Container, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from detector.config import Settings
from detector.intake.inputs import Input, InputReader
from detector.intake.prepare import Prepared, RawInput, batched, prepare_batch, prepare_bytes, read_inputs

Prepare = Callable[[str, bytes, str, Settings, bool], Prepared]

_AHEAD = 2  # batches read and handed to the workers beyond the one the caller holds
_AHEAD_BYTES = 256 * 2**20  # and no more file content than this waiting in the pool
_MIN_BATCHES = 2  # fewer batches than this are prepared here: starting workers costs ~0.5 s
_GIVE_UP = 3  # images in a row on which a worker died even alone: the workers are broken
CRASHED = "WorkerCrashed: the worker process decoding this image died (a decoder crash or out of memory)"


def worker_count(settings: Settings, images: int) -> int:
    """How many worker processes prepare ``images`` images: ``settings.jobs``, or one per
    CPU this process may run on when it is 0; 1 (no workers) for fewer than two batches."""
    if images < _MIN_BATCHES * settings.batch_size:
        return 1
    if settings.jobs > 0:
        return settings.jobs
    return usable_cpus()


def cnn_threads(settings: Settings, images: int) -> int:
    """Threads for the CNN in this process while :func:`prepared_batches` decodes ``images``
    images beside it: ``settings.cnn_threads``, else the usable CPUs less one per worker
    process, at least one. (The CNN's OpenMP threads wait at every layer for the slowest of
    them; beside two busy workers on two CPUs its two threads ran it 2.3 times slower per
    image than one thread did: 39 against 17 ms, a fast scan of 1 MP JPEGs.)"""
    if settings.cnn_threads > 0:
        return settings.cnn_threads
    workers = worker_count(settings, images)
    return max(1, usable_cpus() - (workers if workers > 1 else 0))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def prepared_batches(
    paths: Sequence[str | Input],
    settings: Settings,
    known: Callable[[Sequence[str]], Container[str]] | None = None,
    catalog: bool = False,
    *,
    prepare: Prepare = prepare_bytes,
) -> Generator[list[Prepared], None, None]:
    """:func:`detector.intake.prepare.prepare_batch` over ``paths`` (paths or
    :class:`~detector.intake.inputs.Input`) in batches of
    ``settings.batch_size``, in order, decoded in :func:`worker_count` processes.
    ``known`` is asked about each batch's content when the batch is read, which may be
    before the caller has finished with the batches before it. ``prepare``: the function a
    worker runs on each image (a module-level function, so workers can import it)."""
    jobs = worker_count(settings, len(paths))
    reader = InputReader(settings)
    if jobs <= 1:
        with reader:
            for batch in batched(paths, settings.batch_size):
                yield prepare_batch(batch, settings, known, catalog, prepare=prepare, reader=reader)
        return
    pool = _Pool(jobs, prepare, settings, catalog)
    try:
        ahead: deque[list[Prepared | _Pending]] = deque()
        sizes: deque[int] = deque()
        for batch in batched(paths, settings.batch_size):
            raw = read_inputs(batch, settings, reader)
            seen: Container[str] = known([r.sha256 for r in raw if r.sha256 is not None]) if known else ()
            ahead.append(pool.submit_batch(raw, seen))
            sizes.append(sum(len(r.data or b"") for r in raw))
            while len(ahead) > _AHEAD or (len(ahead) > 1 and sum(sizes) > _AHEAD_BYTES):
                sizes.popleft()
                yield pool.collect(ahead.popleft())
        while ahead:
            yield pool.collect(ahead.popleft())
    finally:
        reader.close()
        pool.close()


@dataclass(frozen=True)
class _Pending:
    """An input sent to a worker: item ``at`` of the list ``future`` will return."""

    raw: RawInput
    future: Future[list[Prepared]]
    at: int


class _Pool:
    """A process pool that takes a batch's images in one chunk per worker (a task per image
    costs more than a small image's decode), and starts again when a worker dies."""

    def __init__(self, jobs: int, prepare: Prepare, settings: Settings, catalog: bool) -> None:
        self.jobs = jobs
        self.prepare = prepare
        self.settings = settings
        self.catalog = catalog
        self._executor = self._start()
        self._crashes = 0  # images in a row whose worker died even alone
        self._local = False  # workers gave up on: decode in this process

    def _start(self) -> ProcessPoolExecutor:
        # forkserver: workers are not forks of this process, whose torch threads and locks
        # a fork would copy mid-use; spawn where there is no forkserver.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=multiprocessing.get_context(method), initializer=_worker_init
        )

    def submit_batch(self, raw: Sequence[RawInput], seen: Container[str]) -> list[Prepared | _Pending]:
        """One batch's slots: finished Prepared (unreadable, or content known) and the
        inputs sent to the workers, in ``jobs`` contiguous chunks."""
        slots: list[Prepared | _Pending] = []
        fresh: list[tuple[int, RawInput]] = []
        for r in raw:
            if r.data is None or r.sha256 is None:
                slots.append(r.unread())
            elif r.sha256 in seen:
                slots.append(r.known())
            elif self._local:
                slots.append(r.traced(self._here(r)))
            else:
                fresh.append((len(slots), r))
                slots.append(Prepared(path=r.path))  # replaced below
        size = max(1, -(-len(fresh) // self.jobs))
        for lo in range(0, len(fresh), size):
            chunk = fresh[lo : lo + size]
            future = self._send([r for _, r in chunk])
            for at, (slot, r) in enumerate(chunk):
                slots[slot] = _Pending(r, future, at)
        return slots

    def _send(self, chunk: list[RawInput]) -> Future[list[Prepared]]:
        try:
            return self._executor.submit(_prepare_chunk, self.prepare, chunk, self.settings, self.catalog)
        except BrokenProcessPool:
            self._restart()
            return self._executor.submit(_prepare_chunk, self.prepare, chunk, self.settings, self.catalog)

    def collect(self, slots: list[Prepared | _Pending]) -> list[Prepared]:
        """The batch's results, in order; the inputs of a broken pool decoded again alone."""
        out = []
        for slot in slots:
            if isinstance(slot, Prepared):
                out.append(slot)
                continue
            try:
                out.append(slot.raw.traced(slot.future.result()[slot.at]))
                self._crashes = 0
            except BrokenProcessPool:
                out.append(slot.raw.traced(self._alone(slot.raw)))
        return out

    def _alone(self, r: RawInput) -> Prepared:
        """One input decoded by itself in a fresh pool: an error for it if a worker dies again.
        After :data:`_GIVE_UP` such images in a row the workers themselves are what fails (a
        script without a ``__main__`` guard, no shared memory): the rest, this image
        included, is decoded in this process."""
        if self._local:
            return self._here(r)
        self._restart()
        try:
            result = self._send([r]).result()[0]
            self._crashes = 0
            return result
        except BrokenProcessPool:
            self._crashes += 1
            if self._crashes >= _GIVE_UP:
                self._local = True
                self._executor.shutdown(wait=False, cancel_futures=True)
                return self._here(r)
            self._restart()
            return Prepared(path=r.path, sha256=r.sha256, error=CRASHED)

    def _here(self, r: RawInput) -> Prepared:
        assert r.data is not None and r.sha256 is not None
        return self.prepare(r.path, r.data, r.sha256, self.settings, self.catalog)

    def _restart(self) -> None:
        """A new pool in place of a broken one (whose futures all fail: :meth:`collect`
        decodes their inputs again, one at a time)."""
        if not _broken(self._executor):
            return
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _prepare_chunk(
    prepare: Prepare, chunk: list[RawInput], settings: Settings, catalog: bool
) -> list[Prepared]:
    """What a worker runs: ``prepare`` on each input of a chunk, in order."""
    out = []
    for r in chunk:
        assert r.data is not None and r.sha256 is not None
        out.append(prepare(r.path, r.data, r.sha256, settings, catalog))
    return out


def _broken(executor: ProcessPoolExecutor) -> bool:
    return bool(getattr(executor, "_broken", False))


def _worker_init() -> None:
    """Workers leave Ctrl-C to the main process, which stops them (they would otherwise each
    print a traceback), and end when their parent does: a main process killed outright
    (SIGKILL, OOM) cannot stop them, and they would otherwise wait for work forever, holding
    the terminal's or a cron job's output pipe open."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The process that started this pool (not the forkserver, which lives while its
    # children do): join returns when the pipe it holds to this worker closes.
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="copyscan-parent-watch", daemon=True).start()
