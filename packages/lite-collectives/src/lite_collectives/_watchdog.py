"""Where every rank is, and what to say when a collective waits too long.

Fast path: before a collective, this rank's position (a sequence number, the op, the tensors'
shapes and dtypes, the caller's file:line) is written to memory, and the backend's work is
waited on in slices of `POLL_S`. Nothing else happens unless a wait lasts longer than
the threshold (``LITE_COLLECTIVES_WATCHDOG_S``, default 2 s). Then a background thread
publishes this rank's position to the process group's store and reads the others', and:

- ranks in different collectives (op, shapes, dtypes or sequence number differ): every waiting
  rank raises [`CollectiveDivergenceError`][lite_collectives.CollectiveDivergenceError] with a table of each rank's position;
- a rank whose process has exited: the waiting ranks raise [`ProcessGroupBrokenError`][lite_collectives.ProcessGroupBrokenError]
  naming it;
- a rank alive but in no collective: after ``LITE_COLLECTIVES_IDLE_REPORT_S`` (default 60 s) each
  waiting rank prints one report of who waits where, and the wait goes on until the timeout.

Only collectives over the default group made through lite_collectives are watched.
"""

from __future__ import annotations

import atexit
import os
import pickle
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lite_collectives._errors import (
    CollectiveDivergenceError,
    CollectiveTimeoutError,
    ProcessGroupBrokenError,
)
from lite_collectives._watch_records import (
    _POLL,
    DEFAULT_IDLE_REPORT_S,
    DEFAULT_THRESHOLD_S,
    IDLE_POLL_S,
    IDLE_REPORT_ENV,
    POLL_S,
    THRESHOLD_ENV,
    TIMEOUT_HINT,
    Peer,
    Position,
    _env_seconds,
    call_site,
)


@dataclass
class Watch:
    """The watchdog of one default process group, in this process."""

    pg: Any
    store: Any
    rank: int
    size: int
    timeout: float
    threshold: float
    idle_report: float
    seq: int = 0
    current: Position | None = None
    since: float = 0.0
    last: Position | None = None
    verdict: BaseException | None = None
    pending: BaseException | None = None  # a divergence found, while the others are being told
    broken: str | None = None
    peers: dict[int, Peer] = field(default_factory=dict)
    stopped: bool = False
    thread: threading.Thread | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    host: str = field(default_factory=socket.gethostname)

    # -- main thread -----------------------------------------------------------------------------

    def enter(self, op: str, tensors: list[torch.Tensor]) -> Position:
        if self.broken is not None:
            raise ProcessGroupBrokenError(
                f"the process group is broken, so {op} cannot run: {self.broken} "
                "Every later collective on it fails the same way: end the run, or call "
                "destroy_process_group() and init_process_group() again."
            )
        self.seq += 1
        self.verdict = self.pending = None
        position = Position(self.seq, op, call_site(), tensors)
        self.since = time.monotonic()
        self.current = position
        return position

    def leave(self) -> None:
        position = self.current
        if position is not None:
            position.tensors = ()  # the tensors are not kept alive past their collective
        self.last, self.current = position, None

    def wait(self, work: Any, limit: float | None = None) -> None:
        """Wait for ``work`` in slices, raising the watchdog's verdict or a timeout as soon as known."""
        limit = self.timeout if limit is None else limit
        while True:
            try:
                work.wait(_POLL)
                return
            except RuntimeError as exc:
                if "Operation timed out" not in str(exc):
                    # A peer that saw the divergence first may have exited already: when this
                    # rank's thread is judging the same wait, its verdict says more.
                    deadline = time.monotonic() + 1.0
                    waited = time.monotonic() - self.since > self.threshold
                    while waited and (self.verdict or self.pending) is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    verdict = self.pending or self.verdict
                    if verdict is not None:
                        raise verdict from exc
                    raise self.backend_failed(exc) from exc
            if self.verdict is not None:
                raise self.verdict
            if time.monotonic() - self.since > limit:
                raise self.timed_out(limit)

    def break_with(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason

    # -- errors -----------------------------------------------------------------------------------

    def _where(self) -> str:
        return self.current.describe() if self.current else "a collective"

    def timed_out(self, limit: float, backend: str = "") -> CollectiveTimeoutError:
        op = self.current.op.split("(")[0] if self.current else "collective"
        here = self._where()
        missing, lines = self._report_lines()
        who = f" Ranks that never arrived: {', '.join(map(str, missing))}." if missing else ""
        detail = ("\n" + "\n".join(lines)) if lines else ""
        said = f"\nBackend said: {backend}" if backend else ""
        self.break_with(f"{here} timed out after {limit:g} s on rank {self.rank}.{who}")
        return CollectiveTimeoutError(
            f"{op} timed out after {limit:g} s on rank {self.rank} of {self.size}: not every rank reached "
            f"this {op} ({here}; a rank skipped it, crashed, or is busy elsewhere).{who}{detail}\n"
            f"Make every rank call the same collectives in the same order. {TIMEOUT_HINT}{said}"
        )

    def backend_failed(self, exc: BaseException) -> BaseException:
        """Turn a backend error during a wait into an error naming the rank that is gone, when one is."""
        text = str(exc).strip()
        first = text.splitlines()[0] if text else repr(exc)
        if "timed out" in text.lower() or "timeout" in text.lower():
            return self.timed_out(self.timeout, first)
        gone = self._gone_ranks(refresh=True)
        deadline = time.monotonic() + 2.0
        while not gone and time.monotonic() < deadline:
            # A killed peer closes its sockets before the kernel shows it gone: look again shortly.
            time.sleep(0.1)
            gone = self._gone_ranks(refresh=True)
        here = self._where()
        if gone:
            names = "; ".join(f"rank {r} {why}" for r, why in gone.items())
            reason = f"{names}, while rank {self.rank} waited in {here}."
        else:
            reason = f"the backend failed on rank {self.rank} in {here}: {first}"
        self.break_with(reason)
        return ProcessGroupBrokenError(f"{reason} (backend said: {first})")

    def _report_lines(self) -> tuple[list[int], list[str]]:
        me = self.current
        lines, missing = [f"  - rank {self.rank} (this rank): waits in {self._where()}"], []
        for r in range(self.size):
            if r == self.rank:
                continue
            peer = self.peers.get(r)
            if peer is None:
                lines.append(f"  - rank {r}: did not answer (its process may be stuck or gone)")
                missing.append(r)
                continue
            lines.append(f"  - rank {r} (pid {peer.pid} on {peer.host}): {peer.describe()}")
            same = (
                peer.state in ("waiting", "diverged")
                and me is not None
                and peer.position is not None
                and peer.position.seq == me.seq
            )
            if not same:
                missing.append(r)
        return missing, lines

    # -- the background thread --------------------------------------------------------------------

    def start(self, learn_peers: bool = False) -> None:
        self._publish("started")
        if learn_peers:  # right after the rendezvous every rank is here: learn their pids now
            try:
                self.store.wait([f"rank/{r}" for r in range(self.size)], timedelta(seconds=10))
                self._read_peers()
            except Exception:  # the thread tries again later
                pass
        self.thread = threading.Thread(target=self._loop, name="lite-collectives-watchdog", daemon=True)
        self.thread.start()

    def stop(self, state: str = "exited") -> None:
        if self.stopped:
            return
        self.stopped = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(5.0)
        if isinstance(self.verdict or self.pending, CollectiveDivergenceError):
            state = "diverged"  # what the slower ranks need to read, even after this one exited
        if self.size > 1:
            try:
                self._publish(state)
            except Exception:  # the store may be gone already (rank 0 exited first)
                pass

    def _publish(self, state: str, waited: float = 0.0, answered: int = 0) -> None:
        self._beat = getattr(self, "_beat", 0) + 1
        position = self.current if state in ("waiting", "diverged") else (self.current or self.last)
        position = position.settled() if position is not None else None
        record = Peer(self.rank, state, position, waited, os.getpid(), self.host, self._beat, answered)
        self.store.set(f"rank/{self.rank}", pickle.dumps(record))

    def _read_peers(self) -> None:
        for r in range(self.size):
            if r != self.rank and self.store.check([f"rank/{r}"]):
                self.peers[r] = pickle.loads(self.store.get(f"rank/{r}"))

    def _gone_ranks(self, refresh: bool = False) -> dict[int, str]:
        unreachable = ""
        if refresh:
            try:
                self._read_peers()
            except Exception as exc:
                unreachable = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        gone: dict[int, str] = {}
        for r, peer in self.peers.items():
            if peer.state in ("exited", "left"):
                gone[r] = f"(pid {peer.pid} on {peer.host}) has exited"
            elif peer.host == self.host and not _alive(peer.pid):
                gone[r] = f"(pid {peer.pid} on {peer.host}) is gone (its process no longer exists)"
        if unreachable and 0 not in gone and self.rank != 0:
            gone[0] = f"is unreachable (it hosts the rendezvous store: {unreachable})"
        return gone

    def _loop(self) -> None:
        asked_for: int | None = None  # the seq this rank asked the others about
        answered = 0
        reported: int | None = None
        previous: dict[int, Peer] = {}
        while not self.stopped and self.verdict is None:
            if len(self.peers) < self.size - 1:  # learn the others' pids once, for when one dies
                try:
                    self._read_peers()
                except Exception:
                    pass
            position, since = self.current, self.since
            waited = time.monotonic() - since if position is not None else 0.0
            waiting = position is not None and waited > self.threshold
            self.wake.wait(POLL_S if waiting else IDLE_POLL_S)
            if self.stopped or dist.group.WORLD is not self.pg:
                return
            try:
                asks = int(self.store.add("asks", 0))
                if waiting and position is not None and position is self.current:
                    if asked_for != position.seq:
                        asks = int(self.store.add("asks", 1))
                        asked_for = position.seq
                    self._publish("waiting", waited, asks)
                    answered = asks
                    previous = dict(self.peers)
                    self._read_peers()
                    verdict = self._judge(position, previous)
                    if verdict is not None:
                        self.verdict = verdict
                        return
                    if waited > self.idle_report and reported != position.seq:
                        reported = position.seq
                        self._print_idle_report(waited)
                elif asks != answered:
                    self._publish("idle", answered=asks)
                    answered = asks
            except Exception as exc:
                if self.pending is not None:  # told the others, then rank 0's store went away
                    self.verdict = self.pending
                    return
                if self.stopped or dist.group.WORLD is not self.pg or not waiting:
                    return  # the store is gone (rank 0 left): nobody is left to ask or answer
                if position is not None and position is self.current and self.rank != 0:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    reason = (
                        f"rank 0 is unreachable (it hosts the rendezvous store: {first}), "
                        f"while rank {self.rank} waited in {position.describe()}."
                    )
                    self.break_with(reason)
                    self.verdict = ProcessGroupBrokenError(reason)
                    return

    def _judge(self, me: Position, previous: dict[int, Peer]) -> BaseException | None:
        differ = []
        for r, peer in self.peers.items():
            before = previous.get(r)
            # A mismatch counts once the peer confirms it: a second, newer record at the same place.
            confirmed = peer.state == "diverged" or (
                peer.state == "waiting"
                and peer.position is not None
                and before is not None
                and before.beat != peer.beat
                and before.state == "waiting"
                and before.position == peer.position
            )
            if confirmed and peer.position is not None and _mismatch(me, peer.position):
                differ.append(r)
        if not differ:
            gone = self._gone_ranks()
            if gone:
                names = "; ".join(f"rank {r} {why}" for r, why in gone.items())
                reason = f"{names}, while rank {self.rank} waited in {me.describe()}."
                self.break_with(reason)
                return ProcessGroupBrokenError(reason)
            return None
        rows = [f"  - rank {self.rank} (this rank): {me.describe()}"]
        rows += [f"  - rank {r}: {self.peers[r].describe()}" for r in sorted(self.peers)]
        reason = f"the ranks diverged: rank {self.rank} waits in {me.describe()}, rank(s) {differ} elsewhere."
        self.break_with(reason)
        error = CollectiveDivergenceError(
            f"ranks are in different collectives (or the same one with different shapes or dtypes), "
            f"seen by rank {self.rank} after {time.monotonic() - self.since:.1f} s:\n"
            + "\n".join(rows)
            + "\nEvery rank must call the same collectives in the same order with the same shapes and "
            "dtypes: look for a collective inside `if rank == 0:` (or another rank-dependent branch)."
        )
        # Known before telling the others: once they exit, this rank's wait fails with a backend error.
        self.pending = error
        # The others see the same mismatch within a poll or two: let them raise this table too
        # before this rank's exit closes its connections (they would then only see it gone).
        self._publish("diverged", time.monotonic() - self.since)
        self.store.set(f"diverged/{self.rank}", str(me.seq))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not self.store.check([f"diverged/{r}" for r in differ]):
            time.sleep(0.05)
        return error

    def _print_idle_report(self, waited: float) -> None:
        _, lines = self._report_lines()
        print(
            f"[lite_collectives] rank {self.rank} has waited {waited:.0f} s in {self._where()}; "
            f"the collective times out after {self.timeout:g} s. Where every rank is:\n" + "\n".join(lines),
            file=sys.stderr,
            flush=True,
        )


def _mismatch(a: Position, b: Position) -> bool:
    return a.seq != b.seq or a.op != b.op or a.settled().meta != b.settled().meta


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


_watch: Watch | None = None
_atexit_registered = False


def watch_for(group: Any) -> Watch | None:
    """The watchdog of the default group when ``group`` is it (started on first use), else None."""
    pg = dist.group.WORLD
    if group is not None and group is not pg:
        return None
    w = _watch
    if w is not None and w.pg is pg and not w.stopped:
        return w
    return _start(pg)


def _start(pg: Any, store: Any = None, timeout: float | None = None) -> Watch | None:
    global _watch, _atexit_registered
    if pg is None:
        return None
    explicit = store is not None
    if _watch is not None:
        _watch.stop("left")
    if store is None:
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # a group made without a store (private API): run unwatched
            return None
    if timeout is None:
        timeout = _group_timeout_s(pg)
    size = dist.get_world_size()
    _watch = Watch(
        pg=pg,
        store=dist.PrefixStore("lite_collectives/watchdog", store),
        rank=dist.get_rank(),
        size=size,
        timeout=timeout,
        threshold=_env_seconds(THRESHOLD_ENV, DEFAULT_THRESHOLD_S),
        idle_report=_env_seconds(IDLE_REPORT_ENV, DEFAULT_IDLE_REPORT_S),
    )
    if size > 1:
        _watch.start(learn_peers=explicit)
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True
    return _watch


def start_watch(pg: Any, store: Any, timeout: float) -> None:
    """Start the watchdog for a group that init_process_group just made."""
    _start(pg, store, timeout)


def stop_watch(state: str = "left") -> None:
    """Tell the other ranks this one left (destroy_process_group), and stop the thread."""
    global _watch
    if _watch is not None:
        _watch.stop(state)
        _watch = None


def current_broken() -> str | None:
    return _watch.broken if _watch is not None else None


def _group_timeout_s(pg: Any) -> float:
    try:
        found = pg._get_backend(torch.device("cpu")).options._timeout
        return float(found.total_seconds())
    except Exception:  # private API, backend-specific: fall back to torch's default
        return 1800.0


def _at_exit() -> None:
    from lite_collectives._lifecycle import shutdown_at_exit

    shutdown_at_exit()
