"""The results store: one JSON line per finished job, appended and flushed to disk as jobs finish.

Each line is {"job": key, "sha256": digest of the result's canonical JSON, "result": ...}. A line
that is cut short (a kill while writing), does not parse, or fails its digest is dropped when the
store is read, and the file is truncated back to the last good line before anything is appended,
so the job is simply run again. The first good line of a job wins.

Certificates (the bulk of a result) go to files of their own, store/certificates/CLAIM-I.json,
written whole before their job's line, which keeps only the file's name and SHA-256: the lines
and the audit's memory stay small however many instances an audit has.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from peftaudit.errors import InputError, PeftauditError

from .plan import AuditPlan

PLAN_FILE = "plan.json"
RESULTS_FILE = "results.jsonl"
CERTIFICATES = "certificates"


def _digest(result: dict) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


class ResultStore:
    """A folder holding plan.json and results.jsonl (the out folder's store/)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.results_path = self.folder / RESULTS_FILE
        self.dropped = 0          # lines found damaged on the last read (their jobs are redone)

    # -------------------------------------------------------------- plan
    @classmethod
    def create(cls, folder: Path, plan: AuditPlan) -> "ResultStore":
        """Write the plan and an empty results file into a hidden sibling of the out folder, then
        rename it into place: a store is there whole or not at all."""
        folder = Path(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent.parent, prefix=f".{folder.parent.name}.store-"))
        (tmp / PLAN_FILE).write_text(json.dumps(plan.to_json(), indent=1) + "\n")
        (tmp / RESULTS_FILE).touch()
        os.replace(tmp, folder)
        return cls(folder)

    def plan(self) -> AuditPlan:
        path = self.folder / PLAN_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError("--resume", str(self.folder.parent), f"an unfinished audit folder with a readable "
                                                                  f"store/{PLAN_FILE} ({exc})") from None
        return AuditPlan.from_json(doc)

    # -------------------------------------------------------------- results
    def read(self) -> dict[str, dict]:
        """Finished results by job key; damaged lines are counted in `dropped` and cut off the file's
        end (a damaged line can only be the last one written)."""
        results: dict[str, dict] = {}
        self.dropped = 0
        good_end = 0
        offset = 0
        try:
            data = self.results_path.read_bytes()
        except FileNotFoundError:
            return results
        for raw in data.splitlines(keepends=True):
            offset += len(raw)
            entry = None
            if raw.endswith(b"\n"):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    entry = None
            if (not isinstance(entry, dict) or not isinstance(entry.get("result"), dict)
                    or entry.get("sha256") != _digest(entry["result"]) or not isinstance(entry.get("job"), str)):
                self.dropped += 1
                continue
            results.setdefault(entry["job"], entry["result"])
            good_end = offset
        if good_end < len(data):  # a cut-off or damaged tail: remove it before appending
            with open(self.results_path, "r+b") as fh:
                fh.truncate(good_end)
        return results

    def keep_certificates(self, result: dict) -> dict:
        """The result with each certificate written to its file and replaced by the file's name and
        SHA-256 ("certificate_stored", "certificate_sha256"); other results unchanged."""
        from peftaudit.instance import atomic_write_bytes

        if result.get("kind") != "claim" or not result.get("certificates"):
            return result
        summaries = {}
        for i, summary in result["certificates"].items():
            if "certificate" in summary:
                data = json.dumps(summary["certificate"]).encode()
                name = f"{CERTIFICATES}/{result['claim']}-{i}.json"
                atomic_write_bytes(self.folder / name, data)
                summary = {k: v for k, v in summary.items() if k != "certificate"}
                summary.update(certificate_stored=name, certificate_sha256=hashlib.sha256(data).hexdigest())
            summaries[i] = summary
        return {**result, "certificates": summaries}

    def certificate(self, summary: dict) -> bytes:
        """A stored certificate's bytes, checked against the SHA-256 its job's line recorded."""
        data = (self.folder / summary["certificate_stored"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != summary["certificate_sha256"]:
            raise PeftauditError(f"store: {summary['certificate_stored']} does not match the SHA-256 its job "
                                 "recorded (changed after it was written)")
        return data

    def append(self, key: str, result: dict) -> None:
        """Append one finished job, durably (one write of the whole line, then fsync)."""
        line = json.dumps({"job": key, "sha256": _digest(result), "result": result}, sort_keys=True) + "\n"
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = line.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
