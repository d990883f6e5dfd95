"""Dynamic batching: concurrent requests grouped into one model call.

TensorFlow runs a batch of 32 images in far less than 32 times the time of
one (a convolution over a batch uses both cores and one dispatch), so a
server that calls the model once per request leaves most of its throughput
unused under load. `Batcher` queues the requests of the event loop, takes
as many as fit in `max_batch` examples, waiting at most `timeout_s` after
the first one, and calls the model once in a worker thread, off the event
loop, so new requests keep being read while it runs.

Up to `threads` calls run at once (TF Serving's `num_batch_threads`): the
next batch is formed and started as soon as a thread is free, so with two
the model is not left idle while the event loop answers one batch's
requests and reads the next one's (the server's default is one: see
`dltool.serving.server.DEFAULT_BATCH_THREADS`).
"""

import asyncio
import concurrent.futures
import dataclasses
import time


@dataclasses.dataclass
class BatchStats:
    """What a `Batcher` has done, for the metadata endpoint and the tests.

    Attributes:
        batches: Model calls made.
        examples: Examples they held.
        largest: The most examples one call held.
        requests: Requests answered (a call holds one or more).
    """

    batches: int = 0
    examples: int = 0
    largest: int = 0
    requests: int = 0

    def as_dict(self):
        return dataclasses.asdict(self)


class _Pending:
    """One request waiting in the queue: its examples and its future."""

    __slots__ = ("examples", "future")

    def __init__(self, examples, future):
        self.examples = examples
        self.future = future


class Batcher:
    """Groups the examples of concurrent requests into one call of `fn`.

    Contract: `fn` takes a list of examples (the inputs of one batch, in
    order) and returns a dict of output name to a sequence with one row per
    example (a numpy array); `submit` hands back each request its own rows,
    in its order. A request is never split across calls, so one call holds
    at most `max_batch` examples. When a call of several requests fails, each
    request is run alone, so only the one whose input the model refuses
    gets the error.

    Args:
        fn: The model call (blocking; it runs in a worker thread, and with
            `threads` over 1 must take concurrent calls, as a TensorFlow
            function does).
        max_batch: The most examples in one call.
        timeout_s: How long the first request of a batch waits for more.
        threads: The most calls running at once.

    Raises:
        ValueError: `max_batch` or `threads` under 1.
    """

    def __init__(self, fn, *, max_batch, timeout_s, threads=1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.fn = fn
        self.max_batch = max_batch
        self.timeout_s = max(0.0, timeout_s)
        self.threads = threads
        self.stats = BatchStats()
        self._queue = None
        self._worker = None
        self._free = None  # a semaphore: the threads not running a call
        self._calls = set()  # the calls running, as tasks
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="dltool-model")

    def start(self):
        """Starts the batching task on the running event loop."""
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(self.threads)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        """Stops the batching task, lets the calls running finish (their
        requests are answered) and stops the worker threads."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, examples):
        """Queues one request's examples and waits for their outputs.

        Args:
            examples: A non-empty list of at most `max_batch` examples.

        Returns:
            A dict of output name to the request's rows (one per example).

        Raises:
            ValueError: `examples` is empty or over `max_batch`.
            Exception: whatever `fn` raised on this request's examples.
        """
        if not examples or len(examples) > self.max_batch:
            raise ValueError(f"a request holds 1 to {self.max_batch} examples, "
                             f"got {len(examples)}")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(examples), future))
        return await future

    async def _run(self):
        """Forms batches and starts them, `threads` at most at once, until
        cancelled."""
        carried = None  # a request that did not fit in the previous batch
        while True:
            # A free thread first, then the batch: while every thread is busy
            # the requests queue up, and the next batch takes all that fit.
            await self._free.acquire()
            try:
                first = carried or await self._queue.get()
            except asyncio.CancelledError:
                self._free.release()
                raise
            batch, size, carried = [first], len(first.examples), None
            deadline = time.monotonic() + self.timeout_s
            while size < self.max_batch:
                pending = await self._next_before(deadline)
                if pending is None:
                    break
                if size + len(pending.examples) > self.max_batch:
                    carried = pending
                    break
                batch.append(pending)
                size += len(pending.examples)
            self._start(batch)

    def _start(self, batch):
        """Runs `batch` in a task that frees its thread when done."""
        task = asyncio.get_running_loop().create_task(self._call(batch))
        self._calls.add(task)

        def done(task):
            self._calls.discard(task)
            self._free.release()

        task.add_done_callback(done)

    async def _next_before(self, deadline):
        """The next queued request, or None once `deadline` has passed."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except asyncio.TimeoutError:
            return None

    async def _call(self, batch):
        """Runs one batch and settles its futures."""
        batch = [pending for pending in batch if not pending.future.done()]  # gone clients
        if not batch:
            return
        examples = [example for pending in batch for example in pending.examples]
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self.fn, examples)
        except Exception as error:  # the model refused an input: find whose
            if len(batch) > 1:
                for pending in batch:
                    await self._call([pending])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        self.stats.batches += 1
        self.stats.examples += len(examples)
        self.stats.largest = max(self.stats.largest, len(examples))
        self.stats.requests += len(batch)
        start = 0
        for pending in batch:
            end = start + len(pending.examples)
            if not pending.future.done():
                pending.future.set_result({name: rows[start:end]
                                           for name, rows in outputs.items()})
            start = end
