"""The results store: one JSON line per finished job, appended and flushed to disk as jobs finish.

Each line is {"job": key, "sha256": digest of the result's canonical JSON, "result": ...}. A line
that is cut short (a kill while writing), does not parse, or fails its digest is dropped when the
store is read, and the file is truncated back to the last good line before anything is appended,
so the job is simply run again. The first good line of a job wins.

Certificates (the bulk of a result) go to files of their own, store/certificates/CLAIM-I.json,
written whole before their job's line, which keeps only the file's name and SHA-256: the lines
and the audit's memory stay small however many instances an audit has.

A store is input on --resume: its folders must be real folders and its files regular files,
opened without following links or blocking (a FIFO, a link to a user's file, a line naming
/etc/passwd are refused), every line's result must have the form its job gives (else the line is
dropped and the job redone), and a certificate is read only under the one name its job and
instance give.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from peftaudit.errors import InputError, PeftauditError

from .plan import AuditPlan, Job

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
MAX_PLAN_BYTES = 256 * 2**20
MAX_RESULTS_BYTES = 1 * 2**30
MAX_CERTIFICATE_BYTES = 1 * 2**30
PLAN_FILE = "plan.json"
RESULTS_FILE = "results.jsonl"
CERTIFICATES = "certificates"


def _no_constant(token: str) -> float:
    raise ValueError(f"{token} is not a number JSON allows")


def _digest(result: dict) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


class ResultStore:
    """A folder holding plan.json and results.jsonl (the out folder's store/)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.results_path = self.folder / RESULTS_FILE
        self.dropped = 0          # lines found damaged on the last read (their jobs are redone)

    def _real_folder(self, path: Path) -> Path:
        """`path` when it is a real folder (not a link) or absent; InputError otherwise."""
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise InputError("store", str(path), "a real folder of the audit's store (not a link or a file)")
        return path

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
        """The plan in store/plan.json, checked (store folders real, the file regular, every field)."""
        from peftaudit import jsonio

        self._real_folder(self.folder)
        self._real_folder(self.folder / CERTIFICATES)
        data = jsonio.read_regular_file(self.folder / PLAN_FILE, f"store/{PLAN_FILE}", MAX_PLAN_BYTES,
                                        follow_links=False)
        jsonio.check_depth(data, f"store/{PLAN_FILE}")
        try:  # plain JSON: job seeds are 63-bit integers, not binary64 numbers
            doc = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"store/{PLAN_FILE}", "invalid JSON", f"valid JSON ({str(exc)[:80]})") from None
        return AuditPlan.from_json(doc)

    # -------------------------------------------------------------- results
    def read(self, jobs: dict[str, Job] | None = None) -> dict[str, dict]:
        """Finished results by job key; damaged lines are counted in `dropped` and cut off the file's
        end (a damaged line can only be the last one written). With `jobs` (key -> Job of the plan),
        a line of no job of the plan, or whose result has not the form its job gives
        (peftaudit/jobs/validate.py), is dropped too and its job redone."""
        from peftaudit import jsonio

        from .validate import result_problem

        results: dict[str, dict] = {}
        self.dropped = 0
        good_end = 0
        offset = 0
        self._real_folder(self.folder)
        if not self.results_path.exists() and not self.results_path.is_symlink():
            return results
        data = jsonio.read_regular_file(self.results_path, f"store/{RESULTS_FILE}", MAX_RESULTS_BYTES,
                                        follow_links=False)
        for raw in data.splitlines(keepends=True):
            offset += len(raw)
            entry = None
            if raw.endswith(b"\n"):
                try:
                    entry = json.loads(raw)
                except (ValueError, RecursionError):
                    entry = None
            if (not isinstance(entry, dict) or not isinstance(entry.get("result"), dict)
                    or entry.get("sha256") != _digest(entry["result"]) or not isinstance(entry.get("job"), str)
                    or (jobs is not None and (entry["job"] not in jobs
                                              or result_problem(jobs[entry["job"]], entry["result"]) is not None))):
                self.dropped += 1
                continue
            results.setdefault(entry["job"], entry["result"])
            good_end = offset
        if good_end < len(data):  # a cut-off or damaged tail: remove it before appending
            fd = os.open(self.results_path, os.O_WRONLY | _NOFOLLOW)
            try:
                os.ftruncate(fd, good_end)
            finally:
                os.close(fd)
        return results

    def keep_certificates(self, result: dict) -> dict:
        """The result with each certificate written to its file and replaced by the file's name and
        SHA-256 ("certificate_stored", "certificate_sha256"); other results unchanged."""
        from peftaudit.instance import atomic_write_bytes

        if result.get("kind") != "claim" or not result.get("certificates"):
            return result
        self._real_folder(self.folder / CERTIFICATES)
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
        """A stored certificate's bytes, checked against the SHA-256 its job's line recorded; read
        only from a regular file directly in store/certificates, without following links."""
        from peftaudit import jsonio

        name = summary["certificate_stored"]
        if not isinstance(name, str) or not re.fullmatch(rf"{CERTIFICATES}/[A-Za-z0-9_.+-]+-[0-9]+\.json", name) \
                or ".." in name:
            raise PeftauditError(f"store: a certificate named {str(name)[:80]!r}, not certificates/CLAIM-I.json")
        self._real_folder(self.folder / CERTIFICATES)
        data = jsonio.read_regular_file(self.folder / name, f"store/{name}", MAX_CERTIFICATE_BYTES,
                                        follow_links=False)
        if hashlib.sha256(data).hexdigest() != summary["certificate_sha256"]:
            raise PeftauditError(f"store: {summary['certificate_stored']} does not match the SHA-256 its job "
                                 "recorded (changed after it was written)")
        return data

    def append(self, key: str, result: dict) -> None:
        """Append one finished job, durably (one write of the whole line, then fsync)."""
        line = json.dumps({"job": key, "sha256": _digest(result), "result": result}, sort_keys=True) + "\n"
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | os.O_NONBLOCK, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError("store", str(self.results_path), "a regular results file")
            data = line.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
