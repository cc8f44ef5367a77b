"""Progress of transfers and jobs on stderr.

On a terminal: live tqdm bars, one per file in flight plus an overall one (a job gets one bar). Elsewhere (a CI
log, a pipe): plain lines, one per finished file and one per 5 % of the overall bytes naming the files in flight,
so a log shows where a long push stood without a carriage return in it.
"""
import os
import sys
import threading
import time

from tqdm import tqdm

OVERALL_STEP_PERCENT = 5


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def _percent(done: int, total: int) -> int:
    return int(100 * done / total) if total else 100


class TransferProgress:
    """Bytes moving through several files at once; every method may be called from any thread."""

    def __init__(self, sizes: dict[str, int], *, verb: str, stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.verb = verb
        self.sizes = sizes
        self.total_bytes = sum(sizes.values())
        self.total_files = len(sizes)
        self.files_done = self.bytes_done = 0
        self._in_flight: dict[str, int] = {}  # name -> bytes so far
        self._bars: dict[str, tqdm] = {}
        self._rows: dict[str, int] = {}  # name -> terminal row of its bar (0 is the overall bar)
        self._free_rows: list[int] = []
        self._next_row = 1
        self._last_step = -1
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._overall = (tqdm(total=self.total_bytes, desc="overall", unit="B", unit_scale=True, unit_divisor=1000,
                              position=0, file=self.stream, **_width(self.stream)) if self.live else None)

    def start(self, name: str) -> None:
        with self._lock:
            self._in_flight[name] = 0
            if self.live:
                row = self._free_rows.pop(0) if self._free_rows else self._next_row
                self._next_row = max(self._next_row, row + 1)
                self._rows[name] = row
                self._bars[name] = tqdm(total=self.sizes[name], desc=_short(name), unit="B", unit_scale=True,
                                        unit_divisor=1000, position=row, leave=False, file=self.stream,
                                        **_width(self.stream))

    def advance(self, name: str, count: int) -> None:
        with self._lock:
            self._in_flight[name] = self._in_flight.get(name, 0) + count
            self.bytes_done += count
            if self.live:
                self._bars[name].update(count)
                self._overall.update(count)
            else:
                self._line_every_step()

    def finish(self, name: str, *, skipped: bool = False) -> None:
        size = self.sizes[name]
        with self._lock:
            self.files_done += 1
            if skipped:
                self.bytes_done += size
            else:  # whatever advance() did not count (nothing, unless the file was empty)
                self.bytes_done += size - self._in_flight.get(name, 0)
            self._in_flight.pop(name, None)
            what = "skipped (already uploaded with the same SHA-256)" if skipped else self.verb
            line = f"[{self.files_done}/{self.total_files}] {what} {name} ({size} bytes)"
            if self.live:
                self._release_bar(name)
                self._overall.update(self.bytes_done - self._overall.n)
                tqdm.write(line, file=self.stream)
            else:
                print(line, file=self.stream)
                self._line_every_step()

    def fail(self, name: str) -> None:
        with self._lock:
            self._in_flight.pop(name, None)
            self._release_bar(name)

    def _release_bar(self, name: str) -> None:
        bar = self._bars.pop(name, None)
        if bar is not None:
            bar.close()
            self._free_rows.append(self._rows.pop(name))
            self._free_rows.sort()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            if self._overall is not None:
                self._overall.close()
            seconds = max(time.monotonic() - self._started, 1e-6)
            print(f"{self.verb} {_megabytes(self.bytes_done)} in {seconds:.1f} s "
                  f"({self.bytes_done / 1e6 / seconds:,.1f} MB/s)", file=self.stream)

    def _line_every_step(self) -> None:
        percent = _percent(self.bytes_done, self.total_bytes)
        step = percent // OVERALL_STEP_PERCENT
        if step <= self._last_step:
            return
        self._last_step = step
        flight = ", ".join(f"{name} {_percent(done, self.sizes[name])}%"
                           for name, done in sorted(self._in_flight.items()))
        print(f"  {percent:3d}% {_megabytes(self.bytes_done)} of {_megabytes(self.total_bytes)}"
              + (f"; in flight: {flight}" if flight else ""), file=self.stream)


def _width(stream) -> dict:
    """tqdm's size options: follow the terminal, or 80 x 24 where it reports 0 x 0 (a pty nobody sized, as under
    `script`), which tqdm would take as no room for any bar."""
    fallback = {"ncols": 80, "nrows": 24}
    try:
        return {"dynamic_ncols": True} if os.get_terminal_size(stream.fileno()).lines else fallback
    except (AttributeError, OSError, ValueError):
        return fallback


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


class JobProgress:
    """A job's progress until it ends: a bar on a terminal, a line per change of status, percent or message
    elsewhere."""

    def __init__(self, job_id, *, stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.job_id = job_id
        self._bar = None
        self._last = None

    def show(self, job: dict) -> None:
        progress = int(job.get("progress") or 0)
        message = job.get("message") or ""
        if self.live:
            if self._bar is None:
                self._bar = tqdm(total=100, desc=f"job {job['id']} {job.get('kind', '')}".rstrip(), unit="%",
                                 file=self.stream, **_width(self.stream),
                                 bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
            self._bar.update(progress - self._bar.n)
            self._bar.set_postfix_str(f"{job['status']} {message}".strip())
            return
        line = f"job {job['id']} {job['status']} {progress}% {message}".rstrip()
        if line != self._last:
            print(line, file=self.stream)
            self._last = line

    def close(self, job: dict) -> None:
        if self._bar is not None:
            self._bar.close()
            print(f"job {job['id']} {job['status']}", file=self.stream)
