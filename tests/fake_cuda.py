"""A stand-in for cuda-python's driver module, for running ``snapload.cuda.CudaCopyEngine`` on
the CPU: "device" memory is host memory, copies are memmoves, and an event completes only after
a configurable number of queries, so the engine's not-ready path is taken."""

from __future__ import annotations

import ctypes
import enum
import itertools


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


class FakeDriver:
    def __init__(self, *, polls_until_ready: int = 2, fail_copy_at: int | None = None):
        self.CUresult = CUresult
        self.CUstream_flags = CUstream_flags
        self.CUevent_flags = CUevent_flags
        self.CUdeviceptr = CUdeviceptr
        self.CU_MEMHOSTREGISTER_PORTABLE = CU_MEMHOSTREGISTER_PORTABLE
        self.polls_until_ready = polls_until_ready
        self.fail_copy_at = fail_copy_at
        self.copies = 0
        self.registered: set[int] = set()
        self.live_streams: set[int] = set()
        self.live_events: set[int] = set()
        self._ids = itertools.count(1)
        self._pending: dict[int, int] = {}  # event -> polls left

    def cuGetErrorName(self, err):
        return CUresult.CUDA_SUCCESS, CUresult(err).name.encode()

    def cuStreamCreate(self, flags):
        s = next(self._ids)
        self.live_streams.add(s)
        return CUresult.CUDA_SUCCESS, s

    def cuStreamDestroy(self, s):
        self.live_streams.discard(s)
        return (CUresult.CUDA_SUCCESS,)

    def cuEventCreate(self, flags):
        e = next(self._ids)
        self.live_events.add(e)
        return CUresult.CUDA_SUCCESS, e

    def cuEventDestroy(self, e):
        self.live_events.discard(e)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemHostRegister(self, address, size, flags):
        self.registered.add(address)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyHtoDAsync(self, dst, src, n, stream):
        if stream not in self.live_streams:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        if self.fail_copy_at is not None and self.copies == self.fail_copy_at:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        ctypes.memmove(int(dst), src, n)
        self.copies += 1
        return (CUresult.CUDA_SUCCESS,)

    def cuEventRecord(self, e, stream):
        self._pending[e] = self.polls_until_ready
        return (CUresult.CUDA_SUCCESS,)

    def cuEventQuery(self, e):
        left = self._pending.get(e, 0)
        if left > 0:
            self._pending[e] = left - 1
            return (CUresult.CUDA_ERROR_NOT_READY,)
        return (CUresult.CUDA_SUCCESS,)

    def cuEventSynchronize(self, e):
        self._pending[e] = 0
        return (CUresult.CUDA_SUCCESS,)
