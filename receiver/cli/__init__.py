"""The ``taskhook`` command line, a module per command group.

`main` parses (`options`, `errors`) and dispatches: ``serve``/``migrate`` (`serve`),
``deliveries``/``export`` (`deliveries`), ``replay``/``rebuild`` (`replay`), ``reconcile``
(`reconcile`), ``prune`` (`prune`), ``sign``/``simulate`` (`simulate`), ``trigger``
(`trigger`); ``tasks`` and other plugins' commands come from the registry (`Command`).
"""

from __future__ import annotations

from receiver.cli.main import main

__all__ = ["main"]
