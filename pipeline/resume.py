"""Chunked commits and resume: what an output folder already holds, and whether it may go on."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.faults import checkpoint
from pipeline.outputs import atomic_write, write_json
from pipeline.summary import SUMMARY_SCHEMA

log = logging.getLogger(__name__)

PARTS = "summary.parts"  # committed chunks: part-000000.parquet, ...
STATE = "state.json"
# keys that change neither rows nor maps: a rerun with other values may resume
VOLATILE = {
    "output_dir",
    "progress",
    "writer_threads",
    "resume",
    "max_error_rate",
    "report",
    "strategies",
    "merge",
    "devices",
    "jit_compile",
    "stop_grace_s",
    "log_level",
}
VOLATILE_DATA = {"num_parallel_calls", "prefetch"}


def fingerprint(config: dict, manifest_sha: str | None, model_sha: str | None) -> str:
    """What decides a run's results: its config (less volatile keys) and its inputs' hashes."""
    kept = {k: v for k, v in config.items() if k not in VOLATILE}
    kept["data"] = {k: v for k, v in kept.get("data", {}).items() if k not in VOLATILE_DATA}
    payload = json.dumps([kept, manifest_sha, model_sha], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class ChunkStore:
    """Summary parts committed chunk by chunk; a chunk is wholly there (its part file) or not."""

    def __init__(self, out: Path, rows: np.ndarray, chunk_rows: int, items_per_row: int = 1):
        self.out = Path(out)  # this process's folder: its parts, state and summary
        self.parts = self.out / PARTS
        self.rows = np.asarray(rows, np.int64)  # the manifest rows it owns, ascending
        self.n_rows = len(self.rows)
        self.chunk_rows = chunk_rows
        self.n_chunks = (self.n_rows + chunk_rows - 1) // chunk_rows
        self.items_per_row = items_per_row  # summary rows per manifest row (target=topk: K)

    def part(self, chunk: int) -> Path:
        return self.parts / f"part-{chunk:06d}.parquet"

    def chunk_rows_of(self, chunk: int) -> np.ndarray:
        """The manifest rows of one chunk."""
        return self.rows[chunk * self.chunk_rows : (chunk + 1) * self.chunk_rows]

    def chunk_of(self, row: int) -> int:
        """The chunk a manifest row belongs to."""
        return int(np.searchsorted(self.rows, row)) // self.chunk_rows

    def committed(self) -> set[int]:
        """Chunks whose part file is complete (readable, with the expected rows)."""
        done = set()
        for chunk in range(self.n_chunks):
            path = self.part(chunk)
            if not path.is_file():
                continue
            try:
                rows = pq.read_metadata(path).num_rows
            except (OSError, pa.ArrowInvalid):
                rows = -1
            if rows == len(self.chunk_rows_of(chunk)) * self.items_per_row:
                done.add(chunk)
            else:  # cannot happen with atomic renames; never trust it anyway
                log.warning("discarding unreadable part %s", path)
                path.unlink()
        return done

    def commit(self, chunk: int, table: pa.Table) -> None:
        """Publish one chunk's rows (its files were written before)."""
        checkpoint("commit")
        self.parts.mkdir(parents=True, exist_ok=True)
        atomic_write(self.part(chunk), lambda tmp: pq.write_table(table, tmp))

    def finalize(self) -> Path:
        """Merge the parts, in order, into summary.parquet (atomically), then drop the parts."""
        target = self.out / "summary.parquet"

        def write(tmp: str) -> None:
            with pq.ParquetWriter(tmp, SUMMARY_SCHEMA) as writer:
                for chunk in range(self.n_chunks):
                    writer.write_table(pq.read_table(self.part(chunk), schema=SUMMARY_SCHEMA))

        atomic_write(target, write)
        shutil.rmtree(self.parts, ignore_errors=True)
        return target


def remove_temporaries(own: Path, shared: Path, stems: set[str]) -> int:
    """Delete the temporary files an interrupted run left (never a finished file).

    In the shared heatmaps/ and overlays/ (which other shards may be writing at the same time)
    only temporaries of this process's own file stems are touched.
    """
    removed = 0
    for folder, mine in (
        (own, None),
        (own / PARTS, None),
        (shared / "heatmaps", stems),
        (shared / "overlays", stems),
        (shared / "guided", stems),
    ):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp") and entry.is_file()):
                continue
            if mine is not None and name[1:].rsplit(".", 3)[0] not in mine:
                continue  # .<stem>.<ext>.<random>.tmp of another shard's row
            os.unlink(entry.path)
            removed += 1
    return removed


def prepare(
    out: Path,
    shared: Path,
    fp: str,
    resume: bool,
    rows: np.ndarray,
    chunk_rows: int,
    stems: set[str],
    items_per_row: int = 1,
) -> ChunkStore:
    """Check the folder against this run's fingerprint; returns the store to continue in.

    A folder holding another config's or manifest's results is refused (exit 2) unless
    resume=false, which starts over by deleting only this tool's own partial results.
    """
    state_path = out / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    store = ChunkStore(out, rows, chunk_rows, items_per_row)
    if state is None and (out / "summary.parquet").exists() and resume:
        raise ConfigError(
            f"{out} already holds a summary.parquet of unknown origin; choose another "
            "output_dir, or pass resume=false to overwrite it"
        )
    if state is not None and state.get("fingerprint") != fp:
        if resume:
            raise ConfigError(
                f"{out} holds results of a different config or manifest; choose another "
                "output_dir, or pass resume=false to start over in it"
            )
    if state is not None and not resume:
        log.info("resume=false: starting over in %s", out)
        shutil.rmtree(store.parts, ignore_errors=True)
        (out / "summary.parquet").unlink(missing_ok=True)
        state = None
    removed = remove_temporaries(out, shared, stems)
    if removed:
        log.info("removed %d temporary files of an interrupted run", removed)
    if state is None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            state_path,
            {"fingerprint": fp, "rows": len(rows), "chunk_rows": chunk_rows, "complete": False},
        )
    return store


def mark_complete(out: Path) -> None:
    path = out / STATE
    state = json.loads(path.read_text())
    state["complete"] = True
    write_json(path, state)


def is_complete(out: Path, fp: str) -> bool:
    path = out / STATE
    if not path.is_file() or not (out / "summary.parquet").is_file():
        return False
    state = json.loads(path.read_text())
    return bool(state.get("complete")) and state.get("fingerprint") == fp


def check_writable(out: Path) -> None:
    """Fail fast, before any work, when the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir {out} is not writable: {exc.strerror or exc}") from exc
