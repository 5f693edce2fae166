"""A stand-in for cuda-python's driver module, for running ``snapload.cuda.CudaCopyEngine`` on
the CPU. "Device" memory is host memory. It keeps the semantics that make early slot release
visible, as a real device would:

- ``cuMemcpyHtoDAsync`` only queues the copy on its stream; the bytes move when the stream's
  work up to a recorded event completes (an event query that answers ready, or a synchronize),
  reading the host buffer *then*. A slot handed back to the readers before its event completed
  is refilled, and the copy takes the wrong bytes.
- An event completes only after ``polls_until_ready`` queries, so the engine's not-ready path
  runs; completion is in stream order.
- Every call is logged, so tests can check ordering (streams waiting on the allocating stream
  before their first copy) and that no stream or event outlives an error.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
from dataclasses import dataclass, field


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_NOT_READY = 600


class CUstream_flags(enum.IntEnum):
    CU_STREAM_NON_BLOCKING = 1


class CUevent_flags(enum.IntEnum):
    CU_EVENT_DISABLE_TIMING = 2


CU_MEMHOSTREGISTER_PORTABLE = 1


class CUdeviceptr(int):
    pass


class CUstream(int):
    pass


@dataclass
class _Stream:
    queued: list[tuple[int, int, int]] = field(default_factory=list)  # (dst, src, n), in order
    done: int = 0  # copies executed so far


class FakeDriver:
    def __init__(
        self,
        *,
        polls_until_ready: int = 2,
        fail_copy_at: int | None = None,
        fail_event_create_at: int | None = None,
        fail_synchronize: bool = False,
    ):
        self.CUresult = CUresult
        self.CUstream_flags = CUstream_flags
        self.CUevent_flags = CUevent_flags
        self.CUdeviceptr = CUdeviceptr
        self.CUstream = CUstream
        self.CU_MEMHOSTREGISTER_PORTABLE = CU_MEMHOSTREGISTER_PORTABLE
        self.polls_until_ready = polls_until_ready
        self.fail_copy_at = fail_copy_at
        self.fail_event_create_at = fail_event_create_at
        self.fail_synchronize = fail_synchronize
        self.copies = 0  # issued
        self.executed = 0  # bytes actually moved, copies
        self.registered: set[int] = set()
        self.live_streams: set[int] = set()
        self.live_events: set[int] = set()
        self.log: list[tuple[str, int, int]] = []  # (call, stream or event, other)
        self._ids = itertools.count(1)
        self._events_created = 0
        self._streams: dict[int, _Stream] = {}
        self._marks: dict[int, tuple[int, int]] = {}  # event -> (stream, copies queued before it)
        self._polls: dict[int, int] = {}

    def cuGetErrorName(self, err):
        return CUresult.CUDA_SUCCESS, CUresult(err).name.encode()

    def cuStreamCreate(self, flags):
        s = next(self._ids)
        self.live_streams.add(s)
        self._streams[s] = _Stream()
        return CUresult.CUDA_SUCCESS, s

    def cuStreamDestroy(self, s):
        self.live_streams.discard(s)
        return (CUresult.CUDA_SUCCESS,)

    def cuEventCreate(self, flags):
        if self.fail_event_create_at is not None and self._events_created == self.fail_event_create_at:
            return CUresult.CUDA_ERROR_INVALID_VALUE, None
        self._events_created += 1
        e = next(self._ids)
        self.live_events.add(e)
        return CUresult.CUDA_SUCCESS, e

    def cuEventDestroy(self, e):
        self.live_events.discard(e)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemHostRegister(self, address, size, flags):
        self.registered.add(address)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemHostUnregister(self, address):
        self.registered.discard(address)
        return (CUresult.CUDA_SUCCESS,)

    def cuStreamWaitEvent(self, stream, event, flags):
        if stream not in self.live_streams or event not in self.live_events:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        self.log.append(("wait", int(stream), int(event)))
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyHtoDAsync(self, dst, src, n, stream):
        if stream not in self.live_streams:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        if self.fail_copy_at is not None and self.copies == self.fail_copy_at:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        self._streams[stream].queued.append((int(dst), int(src), int(n)))
        self.copies += 1
        self.log.append(("copy", int(stream), int(n)))
        return (CUresult.CUDA_SUCCESS,)

    def cuEventRecord(self, e, stream):
        if e not in self.live_events:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        s = int(stream)
        queued = len(self._streams[s].queued) if s in self._streams else 0
        self._marks[e] = (s, queued)
        self._polls[e] = self.polls_until_ready
        self.log.append(("record", int(e), s))
        return (CUresult.CUDA_SUCCESS,)

    def cuEventQuery(self, e):
        left = self._polls.get(e, 0)
        if left > 0:
            self._polls[e] = left - 1
            return (CUresult.CUDA_ERROR_NOT_READY,)
        self._complete(e)
        return (CUresult.CUDA_SUCCESS,)

    def cuEventSynchronize(self, e):
        if self.fail_synchronize:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        self._polls[e] = 0
        self._complete(e)
        return (CUresult.CUDA_SUCCESS,)

    def _complete(self, e: int) -> None:
        """Run the event's stream up to the event: the copies read their source now."""
        stream, upto = self._marks.get(e, (0, 0))
        q = self._streams.get(stream)
        if q is None:
            return
        while q.done < upto:
            dst, src, n = q.queued[q.done]
            ctypes.memmove(dst, src, n)
            q.done += 1
            self.executed += 1
