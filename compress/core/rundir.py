"""The run directory, the variants in it and the results measured on them: the contract between the CPU box
that runs the pipeline, the GPU that builds engines and the Jetson that receives a bundle.

    RUN/
      run.json                          layout version (FORMAT) and the compress that wrote it
      recipe.json                       options of the last successful run (provenance only: nothing reads it
                                        back to decide how a variant is preprocessed)
      cache/                            decoded images, calibration statistics
      variants/<name>/model.onnx        a deployable ONNX; its metadata carries lineage and preprocessing
      variants/<name>/model.pt          the torch model of float variants made from a checkpoint
      variants/<name>/stage.json        how it was made: inputs' digests, parity, calibration facts
      results/<backend>/<name>/         one measurement of a variant on a backend (stage.json, top5.npy)
      engines/<device key>/             TensorRT engines, never copied between machines
      report.{json,md,csv,html}, *.png  the report: links through .report to the current .report-*/ folder,
                                        switched atomically, so the files are replaced as a set

Everything read from a run directory is untrusted (it travels between machines): variant names are checked
against the grammar before they become paths, and results are checked against the `Result` schema.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from compress import __version__
from compress.core.errors import UserError
from compress.core.onnxfile import metadata, preprocess_of
from compress.core.store import write_json
from compress.core.variant import parse_variant

FORMAT = 1  # bump when the layout changes; `RunDir.open` refuses a layout it does not know


class RunDir:
    """Every path of a run directory, and what is in it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------------------------
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def variant_dir(self, name: str) -> Path:
        parse_variant(name)  # a name from an untrusted file never becomes a path unless it is a variant name
        return self.root / "variants" / name

    def onnx(self, name: str) -> Path:
        return self.variant_dir(name) / "model.onnx"

    def torch_model(self, name: str) -> Path:
        return self.variant_dir(name) / "model.pt"

    def result_dir(self, backend: str, name: str) -> Path:
        return self.root / "results" / backend / parse_variant(name).name

    def sensitivity(self, name: str) -> Path:
        return self.result_dir("sensitivity", name) / "sensitivity.json"

    def engines(self, device_key: str) -> Path:
        return self.root / "engines" / device_key

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def inside(self, relative: str) -> Path:
        """`relative` resolved under the run directory, refused if it leads outside (an untrusted path)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise UserError(f"{self.root}: {str(relative)[:60]!r} points outside the run directory")
        return path

    # -- version ------------------------------------------------------------------------------------------
    def create(self) -> RunDir:
        """Make (or adopt) the directory for a run; refuses a file or a run of another layout."""

        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} is a file", "pass a directory for the run")
        if (self.root / "variants").is_dir() or (self.root / "run.json").exists():
            self._check_version()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {self.root}: {exc.strerror}", "pass a writable --out folder") from None
        try:
            write_json(self.root / "run.json", {"format": FORMAT, "compress": __version__})
        except OSError as exc:
            raise UserError(f"cannot write in {self.root}: {exc.strerror}", "pass a writable --out folder") from None
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run directory for one compress process; a second one is told who holds it. Stale temporaries
        of killed runs are removed once the lock is held (no other run can be writing them)."""
        import fcntl

        path = self.root / ".lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()[:20] or "unknown"
                raise UserError(f"{self.root} is in use by another compress process (pid {holder})",
                                "wait for it to finish, or pass another folder") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            for stale in self.root.rglob(".*.part"):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
            try:
                yield self
            finally:
                f.seek(0)
                f.truncate()

    def check(self) -> RunDir:
        """Refuse a directory that is not a run directory of this layout."""
        if not (self.root / "variants").is_dir():
            raise UserError(f"{self.root} is not a run directory (no variants/)",
                            "pass the --out folder of 'compress run'")
        return self._check_version()

    def _check_version(self) -> RunDir:
        try:
            meta = json.loads((self.root / "run.json").read_text())
            version = meta["format"] if isinstance(meta, dict) else None
        except FileNotFoundError:
            version = 0
        except (OSError, ValueError, KeyError):
            version = None
        if version != FORMAT:
            raise UserError(f"{self.root}: run directory layout {version} is not {FORMAT}, the one this compress "
                            "reads", "rerun 'compress run' into a new --out folder")
        return self

    # -- contents -----------------------------------------------------------------------------------------
    def recorded(self) -> dict:
        """The last run's options (recipe.json): provenance only, read as untrusted; {} when unreadable."""
        try:
            recipe = json.loads(self.recipe.read_text())
        except (OSError, ValueError):
            return {}
        return recipe if isinstance(recipe, dict) else {}

    def eval_limit(self) -> int | None:
        """The evaluation image limit the last run recorded, None unless a positive whole number. (The folder it
        recorded is never read back: a run directory from elsewhere could name any folder there.)"""
        measure = self.recorded().get("measure")
        limit = measure.get("eval_limit") if isinstance(measure, dict) else None
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def crop(self, variants: list[dict]) -> int:
        """The one input size the variants were made for (from their own preprocessing)."""
        crops = {v["preprocess"].crop for v in variants}
        if len(crops) != 1:
            raise UserError(f"the variants of {self.root} were made for different crops ({sorted(crops)})",
                            "rerun 'compress run' into a fresh --out")
        return crops.pop()

    def variants(self) -> list[dict]:
        """The ONNX variants present, with precision, sparsity and preprocessing read from each file's metadata."""

        found = []
        for path in sorted((self.root / "variants").glob("*/model.onnx")):
            try:
                v = parse_variant(path.parent.name)
            except UserError:
                continue  # not a variant folder: never read
            meta = metadata(path)
            found.append({"name": v.name, "precision": meta.get("compress.precision", v.precision),
                          "sparse": meta.get("compress.sparsity") == "2:4", "path": path,
                          "preprocess": preprocess_of(meta, path)})
        if not found:
            raise UserError(f"no variants in {self.root}", "run 'compress run' first, or pass a bundle directory")
        return found


