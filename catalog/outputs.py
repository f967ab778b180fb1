"""The one guard every job runs on its output folder before it writes anything.

Jobs build their output beside the destination and swap it in whole (or overwrite their own files in
it), so a folder given as `--out` loses what it held. A job may only do that to a folder it recognises
as its own earlier output, by the files that job always writes there (its markers, e.g. novelty.json of
a novelty model); a new or empty folder is fine too. Anything else is refused before any work starts,
with a message that names the flag, the folder, what it holds and the fix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path


def check_output_folder(
    path: str | os.PathLike,
    markers: Sequence[str],
    *,
    job: str,
    what: str,
    flag: str = "--out",
) -> Path:
    """Return `path` if `job` may replace it: it does not exist, is an empty folder, or holds one of
    `markers` (file or folder names relative to it; glob patterns such as 'part-*.parquet' allowed).

    Args:
        path: the output folder the job was given.
        markers: what the job always writes there, by which an earlier output of the job is recognised.
        job: the job (or library function) as the message names it, e.g. 'jobs.train_novelty'.
        what: what the markers stand for, e.g. 'novelty model'.
        flag: the flag or argument that named `path`.

    Raises:
        NotADirectoryError: `path` is a file.
        ValueError: `path` is a folder that holds other things and none of the markers.
    """
    path = Path(path)
    if not path.exists():
        return path
    if not path.is_dir():  # an OSError with the path, as the jobs print any path flag naming a file
        raise NotADirectoryError(
            errno.ENOTDIR, f"{flag} names a file; {job} writes a folder there", str(path)
        )
    entries = sorted(p.name for p in path.iterdir())
    if not entries or any(any(path.glob(m)) for m in markers):
        return path
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise ValueError(
        f"{flag} {path} holds files but no {what} ({' or '.join(markers)}): it holds {shown}. {job} "
        f"replaces {flag} with its own output and would delete or overwrite them. Give a new or empty "
        f"folder, or an earlier output of {job}."
    )
