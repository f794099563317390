"""Peak resident memory of a merge, read from the kernel instead of sampled by a thread.

```python
from llmlab.merge.peak import peak_rss
with peak_rss() as peak:
    run_the_merge()
peak.mb   # the process's highest resident set size while the block ran
```

On Linux the process's high-water mark (``VmHWM``) is reset on entry (``/proc/self/clear_refs``,
value 5, checked against ``VmRSS``) and read on exit: no sampler thread competes with the merge for the GIL, and a peak
shorter than a sampling interval is not missed. Elsewhere it falls back to the scoring core's
sampling ``peak_memory``, as it does where the kernel keeps the old mark. The reset is process-wide: a ``VmHWM`` or ``ru_maxrss`` read by other
code in the same process afterwards starts from this block.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Peak:
    mb: float = 0.0


def _status_mb(field: str) -> float:
    m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if m is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(m.group(1)) / 1024


def _reset_hwm() -> None:
    """Reset the high-water mark to the current RSS; OSError where the kernel does not (some
    sandboxes accept the write and keep the old mark)."""
    _CLEAR_REFS.write_text("5")
    if _status_mb("VmHWM") > _status_mb("VmRSS") + 16:
        raise OSError("the kernel kept VmHWM after clear_refs")


@contextlib.contextmanager
def peak_rss() -> Iterator[Peak]:
    """``with peak_rss() as peak: ...`` then ``peak.mb``."""
    peak = Peak()
    try:
        _reset_hwm()
    except OSError:
        from llmlab.scoring import peak_memory

        with peak_memory() as pm:
            yield peak
        peak.mb = pm.peak_mb
        return
    yield peak
    peak.mb = _status_mb("VmHWM")
