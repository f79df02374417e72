"""Keep the ONNX exporter's own output (torch.onnx dynamo export, torch.export, onnxscript and
onnx_ir passes) off a user's screen: ~170 lines of "Skipping constant folding..." and
"Replaced initializer..." on a node's first start say nothing to someone running it, and bury
what does. They stay available at DEBUG (`sam-mmseg -v export` shows them).

Everything measured on the launch screen is Python-level: logging records (onnxscript, onnx_ir
through the root logger; torch.onnx through torch's own stderr handler, in glog format), a
FutureWarning from torch.export, and prints. Output written by C++ straight to file descriptors
is not captured here; none was seen during an export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

LOG = logging.getLogger("sam_mmseg_ros.engine.export")

EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")
"""Logger trees the exporter writes to. torch gives several of their loggers handlers of their
own (not propagating), so each such logger is redirected, not only the roots."""


class _AtDebug(logging.Handler):
    """Passes a record on through LOG at DEBUG, keeping the exporter's logger name in it."""

    def emit(self, record: logging.LogRecord) -> None:
        if LOG.isEnabledFor(logging.DEBUG):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            LOG.handle(record)


def _exporter_loggers() -> list[logging.Logger]:
    """Each exporter tree's root, and every existing logger in them that would not simply pass its
    records up to that root (it has handlers, or does not propagate)."""
    prefixes = tuple(f"{name}." for name in EXPORTER_LOGGERS)
    existing = [logger for name, logger in list(logging.Logger.manager.loggerDict.items())
                if isinstance(logger, logging.Logger) and name.startswith(prefixes)
                and (logger.handlers or not logger.propagate)]
    return [logging.getLogger(name) for name in EXPORTER_LOGGERS] + existing


@contextlib.contextmanager
def exporter_output_at_debug():
    """Within the block, the exporter's log records, warnings and prints go to LOG at DEBUG.

    Warnings and prints are process-wide state, so another thread's warnings or prints during an
    export are caught too (they are logged at DEBUG as well, not lost)."""
    relay = _AtDebug()
    saved = [(logger, logger.handlers, logger.propagate) for logger in _exporter_loggers()]
    printed, caught = io.StringIO(), []
    try:
        for logger, _, _ in saved:
            logger.handlers, logger.propagate = [relay], False
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
            yield
    finally:  # an export that failed keeps what it said, at DEBUG, next to its traceback
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        for warning in caught:
            LOG.debug("%s: %s (%s:%s)", warning.category.__name__, warning.message, warning.filename,
                      warning.lineno)
        for line in printed.getvalue().splitlines():
            LOG.debug("exporter: %s", line)
