"""Answer extraction, format check and time-bounded answer grading.

The accuracy reward compares the last ``\\boxed{...}`` of a response with the gold answer using
math-verify (LaTeX -> sympy, then numeric/symbolic/set comparison).  Responses come from a policy
being trained, so they are adversarial by accident: ``10^{10^{10^{10}}}``, ``2^{2^{2^{2^{20}}}}``,
deeply nested fractions, NUL bytes and lone surrogates all show up eventually, and one of them
must never stall or crash a training step.

Why a subprocess
    sympy can spend unbounded time (and memory) on such input, partly inside C code where a
    pending signal is only seen when the C call returns (measured: an alarm due after 0.2 s
    fired after 1.4 s, at the end of one big-integer multiplication).  math-verify's own
    timeout is ``signal.alarm``, which therefore cannot bound those calls, and it only works in
    the main thread at all (anywhere else it raises unless timeouts are switched off).  The only
    bound that always holds is killing a process.  So grading runs in a persistent worker
    process; the parent sends ``(answer, gold)`` over a pipe, waits with
    ``Connection.poll(timeout)`` and, if no verdict arrives in time, kills the worker, counts a
    timeout and returns False.  The next request lazily starts a fresh worker.  The parent side
    uses no signals, so any thread may grade.

Why ``subprocess`` + a pipe rather than ``multiprocessing``'s "spawn" context
    "spawn" (and "forkserver") re-import the parent's ``__main__`` module in the child.  For a
    training entry point that imports torch and Lightning at the top that costs seconds and
    hundreds of MB on every worker (re)start (measured: a spawn child importing math-verify is
    ready in ~0.5 s, but in ~3.8 s when ``__main__`` imports torch + lightning).  Instead the
    worker is ``python -c <bootstrap>`` that loads this file by path -- not even the
    ``ares_lit`` package is imported -- and speaks over a
    ``multiprocessing.connection.Connection`` on an inherited socket.  Start-up (interpreter,
    math-verify + sympy import, a warm-up grade) takes about 1 s and has its own, generous
    timeout, so a restart is never charged to the next answer's time budget.

Cheap guards run before any IPC: control characters and lone surrogates are stripped, answers
longer than ``max_answer_chars`` are rejected, and an answer identical to the gold (up to
whitespace) is accepted without asking the worker.  The worker also caps its address space so a
memory bomb becomes a ``MemoryError`` in the worker instead of an out-of-memory kill of the host.
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection

__all__ = [
    "extract_boxed",
    "extract_answer",
    "ANSWER_FALLBACKS",
    "format_ok",
    "Grader",
    "default_grader",
    "grade",
    "grade_answer",
]

# ---------------------------------------------------------------------------------------------
# Extraction and format (pure string work, linear time, never raise)
# ---------------------------------------------------------------------------------------------

# Starts only at a backslash and \s* runs are disjoint between starts, so finditer is linear.
_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# An escaped character (so \{ and \} are not braces), or a brace.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    Returns None when there is none, when the last one never closes (a truncated generation
    must not be graded on a prefix of its answer), or when ``text`` is not a string.
    """
    if not isinstance(text, str):
        return None
    last = None
    for last in _BOXED_OPEN.finditer(text):
        pass
    if last is None:
        return None
    depth = 1
    for token in _BRACE_TOKEN.finditer(text, last.end()):
        brace = token.group()
        if brace == "{":
            depth += 1
        elif brace == "}":
            depth -= 1
            if depth == 0:
                return text[last.end() : token.start()]
    return None


# The last plain number (integer, decimal or simple fraction) of a text.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
ANSWER_FALLBACKS = ("none", "last_number")


def extract_answer(text: str, fallback: str = "none") -> str | None:
    """The answer to grade: the last ``\\boxed{...}``, else (``fallback="last_number"``) the last
    number in the text. ``"none"`` is the ARES rule: only boxed answers count. The fallback is
    for small models that answer correctly but do not box yet."""
    boxed = extract_boxed(text)
    if boxed is not None or fallback == "none" or not isinstance(text, str):
        return boxed
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else last.group(0)


def format_ok(text: str) -> bool:
    """ARES format: ``<think>...</think>`` first, then a parseable ``\\boxed{...}``.

    The text (leading whitespace ignored) must start with ``<think>``, contain exactly one
    ``<think>`` and exactly one ``</think>``, and have a balanced boxed answer after ``</think>``;
    a box inside the reasoning only does not count.
    """
    if not isinstance(text, str):
        return False
    body = text.lstrip()
    if not body.startswith("<think>") or body.count("<think>") != 1 or body.count("</think>") != 1:
        return False
    answer_part = body[body.index("</think>") + len("</think>") :]
    return extract_boxed(answer_part) is not None


# ---------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------

# C0/C1 control characters other than \t \n \r, and lone surrogates (which are not text).
_JUNK_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_READY = "ready"
_STAT_KEYS = ("graded", "correct", "no_answer", "timeouts", "errors", "too_long")
# Runs `_serve` from this very file without importing `ares_lit` or the parent's __main__.
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_ares_grading_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module._serve(int(sys.argv[2]), int(sys.argv[3]))\n"
)


def _wrap(expr: str) -> str:
    """Put a bare answer string where math-verify looks for one.

    Unwrapped, math-verify only finds plain numbers: ``x^2+2x+1``, ``\\{1,2\\}`` or
    ``\\sqrt{2}/2`` parse to nothing, and ``0.5`` stays a Float.  Inside ``\\boxed{}`` (its
    highest-priority LaTeX target) all of them parse, and a ``$`` in the answer is harmless.
    """
    return "\\boxed{" + expr + "}"


def _serve(fd: int, memory_limit: int) -> None:
    """Worker main loop: answer ``(answer, gold)`` requests with ``(verdict, error)`` replies.

    Runs in its own process's main thread, but math-verify's signal timeouts stay off: the
    parent is the single clock, and it counts a timeout whenever it has to kill us.
    """
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it stops us
    if memory_limit > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ImportError, ValueError, OSError):
            pass
    # It warns once per process that timeouts are disabled; that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    def check(answer: str, gold: str) -> bool:
        gold_parsed = parse(_wrap(gold), parsing_timeout=None)
        answer_parsed = parse(_wrap(answer), parsing_timeout=None)
        return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))

    conn = Connection(fd)
    # Warm up (regex compilation, sympy's simplify caches: ~0.5 s) now, so that the first
    # request after a (re)start is not charged for it against its timeout.
    check("(x+1)^2", "x^2+2x+1")
    conn.send(_READY)
    while True:
        try:
            answer, gold = conn.recv()
        except (EOFError, OSError):  # parent closed the pipe or died: nothing left to do
            return
        try:
            reply = (check(answer, gold), None)
        except Exception as exc:  # str(exc) may embed a huge sympy object; the type is enough
            reply = (False, type(exc).__name__)
        conn.send(reply)


_LIVE_WORKERS: set[_Worker] = set()


class _Worker:
    """One grading subprocess and this process's end of its pipe."""

    def __init__(self, start_timeout: float, memory_limit: int) -> None:
        self.owner_pid = os.getpid()
        self.conn, child_conn = Pipe()
        fd = child_conn.fileno()
        this_file = os.path.abspath(__file__)
        argv = [sys.executable, "-c", _BOOTSTRAP, this_file, str(fd), str(memory_limit)]
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL)
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_conn.close()
        _LIVE_WORKERS.add(self)
        try:
            ready = self.conn.poll(start_timeout) and self.conn.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.stop()
            raise RuntimeError("grading worker failed to start")

    def alive(self) -> bool:
        return self.owner_pid == os.getpid() and self.proc.poll() is None

    def ask(self, answer: str, gold: str, timeout: float) -> tuple[bool, str | None] | None:
        """The worker's ``(verdict, error)``, or None if it did not answer within ``timeout``."""
        self.conn.send((answer, gold))
        if not self.conn.poll(timeout):
            return None
        return self.conn.recv()

    def stop(self) -> None:
        """Kill the process (SIGTERM works even mid-C-call: no Python handler), then reap it."""
        _LIVE_WORKERS.discard(self)
        if self.owner_pid != os.getpid():  # a forked copy must not kill its parent's worker
            return
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@atexit.register
def _stop_all_workers() -> None:
    """No orphaned workers: stop every worker this process started."""
    for worker in list(_LIVE_WORKERS):
        try:
            worker.stop()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# Public grader
# ---------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return _JUNK_CHARS.sub("", text).strip()


def _same_text(a: str, b: str) -> bool:
    """Equal up to runs of whitespace: certainly the same answer, no need to ask sympy."""
    return " ".join(a.split()) == " ".join(b.split())


class Grader:
    """Grades answers against gold answers with math-verify in a killable worker process.

    Thread-safe (requests are serialized: there is one worker), never raises from ``grade*``,
    and each answer costs at most ``timeout`` seconds of grading (plus a worker restart, ~1 s,
    after a timeout).  ``stats`` counts outcomes for logging:

    - ``graded``: answers graded (every call, whatever the outcome)
    - ``correct``: verdicts that were True
    - ``no_answer``: no (balanced, non-empty) boxed answer
    - ``too_long``: answer longer than ``max_answer_chars``, rejected unparsed
    - ``timeouts``: the worker had to be killed
    - ``errors``: worker failure, crash or bad input type
    """

    def __init__(
        self,
        timeout: float = 5.0,
        max_answer_chars: int = 1000,
        *,
        start_timeout: float = 60.0,
        memory_limit_bytes: int = 4 << 30,
        answer_fallback: str = "none",
    ) -> None:
        if answer_fallback not in ANSWER_FALLBACKS:
            raise ValueError(f"answer_fallback must be one of {ANSWER_FALLBACKS}; got {answer_fallback!r}")
        self.answer_fallback = answer_fallback
        self.timeout = float(timeout)
        self.max_answer_chars = int(max_answer_chars)
        self.start_timeout = float(start_timeout)
        self.memory_limit_bytes = int(memory_limit_bytes)
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    @property
    def worker_pid(self) -> int | None:
        """PID of the running worker, None if none is running (it starts on first need)."""
        worker = self._worker
        return worker.proc.pid if worker is not None and worker.alive() else None

    def grade(self, pred_text: str, gold: str, *, timeout: float | None = None) -> bool:
        """Whether the last boxed answer of ``pred_text`` equals ``gold``; False if none.

        With ``answer_fallback="last_number"`` an unboxed response is graded on its last number."""
        answer = extract_answer(pred_text, self.answer_fallback)
        if answer is None:
            with self._lock:
                self.stats["graded"] += 1
                self.stats["no_answer"] += 1
            return False
        return self.grade_answer(answer, gold, timeout=timeout)

    def grade_answer(self, answer: str, gold: str, *, timeout: float | None = None) -> bool:
        """Whether an already extracted ``answer`` equals ``gold``."""
        with self._lock:
            self.stats["graded"] += 1
            if timeout is None:
                timeout = self.timeout
            try:
                verdict = self._grade_locked(answer, gold, timeout)
            except Exception:
                self.stats["errors"] += 1
                verdict = False
            self.stats["correct"] += int(verdict)
            return verdict

    def grade_batch(self, preds: list[str], golds: list[str]) -> list[bool]:
        """``grade`` per pair; a hang costs only its own item (False) and a worker restart.

        Raises ValueError if the lists differ in length: silently truncating would misalign
        rewards with responses.
        """
        if len(preds) != len(golds):
            raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
        return [self.grade(pred, gold) for pred, gold in zip(preds, golds)]

    def close(self) -> None:
        """Stop the worker; a later grade starts a new one."""
        with self._lock:
            self._stop_worker()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._stop_worker()
        except Exception:
            pass

    def _grade_locked(self, answer: str, gold: str, timeout: float) -> bool:
        if not isinstance(answer, str):
            self.stats["no_answer"] += 1
            return False
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            gold = str(gold)  # numeric gold columns are common in datasets
        if not isinstance(gold, str):
            self.stats["errors"] += 1
            return False
        answer, gold = _clean(answer), _clean(gold)
        if not answer:
            self.stats["no_answer"] += 1
            return False
        if len(answer) > self.max_answer_chars:
            self.stats["too_long"] += 1
            return False
        if _same_text(answer, gold):
            return True
        return self._ask_worker(answer, gold, timeout)

    def _ask_worker(self, answer: str, gold: str, timeout: float) -> bool:
        if self._worker is None or not self._worker.alive():
            self._stop_worker()
            self._worker = _Worker(self.start_timeout, self.memory_limit_bytes)
        try:
            reply = self._worker.ask(answer, gold, timeout)
        except BaseException:
            # Includes KeyboardInterrupt: a worker with a request in flight would answer the
            # next request with this one's verdict, so it must go.
            self._stop_worker()
            raise
        if reply is None:
            self.stats["timeouts"] += 1
            self._stop_worker()
            return False
        verdict, error = reply
        if error is not None:
            self.stats["errors"] += 1
        return bool(verdict)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()


_default: Grader | None = None
_default_lock = threading.Lock()


def default_grader() -> Grader:
    """The process-wide grader behind ``grade``/``grade_answer`` (read its ``stats`` to log)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader()
        return _default


def grade(pred_text: str, gold: str, timeout: float = 5.0) -> bool:
    """``Grader.grade`` on the default grader: never raises, at most ``timeout`` s of grading."""
    try:
        return default_grader().grade(pred_text, gold, timeout=timeout)
    except Exception:
        return False


def grade_answer(answer: str, gold: str, timeout: float = 5.0) -> bool:
    """``Grader.grade_answer`` on the default grader, for an already extracted answer."""
    try:
        return default_grader().grade_answer(answer, gold, timeout=timeout)
    except Exception:
        return False

