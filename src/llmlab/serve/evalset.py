"""Logs back into evals: sample a server's request log into an eval set (``llmlab eval from-logs``).

```python
from llmlab.serve.evalset import FromLogsConfig, from_logs
report = from_logs(FromLogsConfig(log="models/.serve/demo.requests.jsonl", output="evalset.jsonl", scrub=True))
# then: llmlab score demo-q4_k_m --qa evalset.jsonl   (re-score variants on what users asked)
```

Each answered request logged with its text (``llmlab serve --log-prompts true``) becomes one record
``{"question", "answer", "endpoint", "model", "time"}``: for a chat, the last user message and the
reply; for a completion, the prompt and the continuation. The answer is what the served model
said (a reference to compare variants against, not a verified gold answer). ``scrub`` replaces
e-mail addresses, phone numbers (9+ digits in separated groups) and runs of 6+ digits with
``[EMAIL]``, ``[PHONE]``, ``[NUMBER]``.
Requests that failed, were cut off or were logged without text are skipped and counted.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, NotFoundError
from llmlab.store import write_text

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# digit groups with separators (+1 555 123 4567, (020) 7946-0958); 9+ digits, so dates are not phones
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"
                   r"(?:\d{2,4}[\s.-]){0,3}\d{2,4}(?!\w)")
DIGITS = re.compile(r"\d{6,}")


class FromLogsConfig(BaseModel):
    """Options of ``llmlab eval from-logs``."""

    model_config = ConfigDict(extra="forbid")
    log: str = Field(..., description="The server's request log (JSONL), e.g. $LLMLAB_HOME/.serve/NAME.requests.jsonl.")
    output: str = Field(..., description="The eval set to write (JSONL of question/answer records).")
    limit: int = Field(200, ge=1, description="Most records to sample.")
    seed: int = Field(0, description="Seed of the random sample.")
    scrub: bool = Field(True, description="Replace e-mail addresses, phone numbers and long digit runs.")
    model: str | None = Field(None, description="Only requests to this model name (default: all).")


def scrub(text: str) -> str:
    """``text`` with e-mails, phone numbers and runs of 6+ digits replaced by placeholders."""
    text = EMAIL.sub("[EMAIL]", text)
    text = PHONE.sub(lambda m: "[PHONE]" if sum(c.isdigit() for c in m.group()) >= 9 else m.group(), text)
    return DIGITS.sub("[NUMBER]", text)


def _record(line: dict[str, Any]) -> dict[str, Any] | None:
    if line.get("status") != 200 or line.get("finish_reason") not in ("stop", "length", "tool_calls"):
        return None
    answer = line.get("completion")
    if "messages" in line:
        users = [m["content"] for m in line["messages"] if m.get("role") == "user"]
        question = users[-1] if users else None
    else:
        question = line.get("prompt")
    if not isinstance(question, str) or not isinstance(answer, str) or not question.strip():
        return None
    return {"question": question, "answer": answer.strip(), "endpoint": line.get("endpoint"),
            "model": line.get("model"), "time": line.get("time")}


def from_logs(config: FromLogsConfig) -> dict[str, Any]:
    """Write the eval set (atomically); returns counts: read, usable, written, skipped."""
    from llmlab.serve.requestlog import read

    path = Path(config.log)
    if not path.is_file():
        raise NotFoundError(f"The request log '{path}' does not exist.",
                            "Serve with --log-path (default $LLMLAB_HOME/.serve/NAME.requests.jsonl).")
    lines = [x for x in read(path) if config.model is None or x.get("model") == config.model]
    usable, seen = [], set()
    for line in lines:
        rec = _record(line)
        if rec is None or rec["question"] in seen:
            continue
        seen.add(rec["question"])
        if config.scrub:
            rec["question"], rec["answer"] = scrub(rec["question"]), scrub(rec["answer"])
        usable.append(rec)
    if not usable:
        raise ConfigError(f"No usable request in '{path}' ({len(lines)} lines): none answered with its text logged.",
                          "Serve with --log-prompts true so requests are logged with their text.")
    sample = random.Random(config.seed).sample(usable, min(config.limit, len(usable)))
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample))
    return {"read": len(lines), "usable": len(usable), "written": len(sample),
            "skipped": len(lines) - len(usable), "output": str(out), "scrubbed": config.scrub}
