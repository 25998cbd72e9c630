"""Run every reliability case and write the table of what happened to docs/reliability.md.

    python tests/reliability/write_table.py            # about a minute on 2 CPU cores

The rows are the outcomes of this run (exit code, the error line, what was left behind), not
expectations; the test suite (test_cases.py) asserts the same cases.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models, reliability

from reliability.cases import CASES, run  # noqa: E402
from reliability.world import make_world  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

HEADER = """# Reliability: attacks and faults, and what cogvx does

Every row below was produced by running the case for real (`python tests/reliability/write_table.py`
writes this file; `tests/reliability/test_cases.py` asserts the same cases in the test suite). The
material is made fresh each time: a tiny CogVideoX 5B checkpoint saved by diffusers (`MODEL`), a
copy with other weights and the same configs (`OTHER`), a tiny 5B-I2V checkpoint (`I2V`), and an
engine directory exported from `MODEL` at 9x64x64 (`E`, copied per case before it is damaged).
Paths are shortened: `CASE/` is the case's own folder.

What every refusal must show: exit 2, exactly one line `error: ...` on stderr (no traceback), no
file created, no file of the user's changed or deleted (inside or outside the engine directory).
A validation that finds a bad engine exits 1 with the failing stage named.

| case | command | exit | what cogvx said | left behind |
|---|---|---|---|---|
"""


def shorten(text: str, world, folder: Path) -> str:
    for path, name in ((folder, "CASE"), (world.engines, "E0"), (world.checkpoint, "MODEL"), (world.other, "OTHER"),
                       (world.i2v, "I2V")):
        text = text.replace(str(path), name)
    text = re.sub(r"/tmp/[^ ]*?/case", "CASE", text)
    return text.replace("|", "\\|")


def summary_line(output: str, expected: str) -> str:
    """The line of a run's table that says how it ended: its result, else the expected text's line."""
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and not line.startswith("---") and "%|" not in line]  # no borders, no bars
    chosen = [line for line in lines if line.startswith("result")] or [line for line in lines if expected in line]
    return " ".join((chosen or lines or [""])[0].split())


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cogvx-reliability-") as root:
        world = make_world(Path(root) / "world")
        for index, case in enumerate(CASES):
            folder = Path(root) / f"case-{index}"
            outcome = run(case, world, folder)
            errors = [line for line in outcome.stderr_lines if line.startswith("error: ")]
            said = errors[-1] if errors else summary_line(outcome.output, case.message)
            leftovers = ", ".join(p.replace(str(folder), "CASE") for p in outcome.created + outcome.changed) or "none"
            if outcome.exit == 0:
                leftovers = f"(the requested output) {leftovers}" if leftovers != "none" else leftovers
            command = "cogvx " + " ".join(case.argv(world, folder))
            rows.append(f"| {case.name} | `{shorten(command, world, folder)}` | {outcome.exit} | "
                        f"{shorten(said, world, folder)} | {shorten(leftovers, world, folder)} |")
            print(f"{outcome.exit}  {case.name}", flush=True)
    DOC.write_text(HEADER + "\n".join(rows) + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
