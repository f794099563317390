"""``llmlab jobs ACTION``: recorded jobs listed, shown, logged, cancelled, and exported as a recipe, a
script and a notebook."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmlab.cli.flags import store_from
from llmlab.errors import ConfigError


def cmd_jobs(args: argparse.Namespace) -> int:
    from llmlab.jobs import JobQueue

    queue = JobQueue(store_from(args))
    if args.action == "ls":
        for j in queue.list():
            secs = f"{j.seconds:.0f}s" if j.seconds is not None else "-"
            print(f"{j.id}  {j.status:9}  {secs:>6}  {j.title}" + (f"  ({j.error})" if j.error else ""))
        return 0
    if args.action == "export":
        return _export_jobs(queue, args)
    if len(args.id) != 1:
        raise ConfigError(f"`llmlab jobs {args.action}` needs one job id.", "List them with `llmlab jobs ls`.")
    job_id = args.id[0]
    if args.action == "show":
        job = queue.get(job_id)
        print(json.dumps({**job.model_dump(), "progress": queue.progress(job_id),
                          "recipe": queue.recipe(job_id)}, indent=2, default=str))
    elif args.action == "log":
        print(queue.log(job_id))
    elif args.action == "cancel":
        print(f"{job_id}: {queue.cancel(job_id).status}")
    return 0


def _export_jobs(queue, args: argparse.Namespace) -> int:
    """`llmlab jobs export [JOB_ID...] [--session ID] [--out DIR]`: jobs as a recipe, a script and a notebook."""
    from llmlab import session_code

    session = args.session
    if not args.id and not session:
        known = session_code.sessions(queue)
        if not known:
            raise ConfigError("No job in this store was started from the app, so there is no app session to export.",
                              "Name the jobs instead: `llmlab jobs export JOB_ID...` (ids from `llmlab jobs ls`).")
        session = known[0]
    options = {"statuses": tuple(args.status or ("done",)), "lineage": not args.no_lineage}
    if session and args.id:
        raise ConfigError("Give job ids or --session, not both.", "`llmlab jobs export --session ID` exports one "
                          "app session; `llmlab jobs export JOB_ID...` exports the jobs named.")
    code = (session_code.gather(queue, session=session, **options) if session
            else session_code.gather(queue, job_ids=args.id, **options))
    out = Path(args.out) if args.out else (session_code.session_folder(queue.store, session) if session
                                           else Path(code.name))
    files = session_code.write(code, out)
    print(code.summary())
    for path in files.values():
        print(f"wrote {path}")
    return 0
