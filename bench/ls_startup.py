"""Label Studio start-up for the tests: PostgreSQL (template cluster copied and started) vs SQLite
(template file copied), measured alternately in the same run.

Prints one line per start (seconds from copying the template to the first 200 from /health) and the
medians with their ratio. Templates are built first if missing (not timed).

    .venv/bin/python bench/ls_startup.py --rounds 3
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.label_studio import LabelStudioServer, ensure_template  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for db in ("postgresql", "sqlite"):
        ensure_template(db)
    times = {"postgresql": [], "sqlite": []}
    for i in range(args.rounds):
        for db in ("postgresql", "sqlite") if i % 2 == 0 else ("sqlite", "postgresql"):
            with tempfile.TemporaryDirectory() as work:
                t = time.perf_counter()
                server = LabelStudioServer(Path(work), db=db).start()
                times[db].append(time.perf_counter() - t)
                server.stop()
            print(f"{db:10s} start {times[db][-1]:.1f} s", flush=True)
    pg, lite = statistics.median(times["postgresql"]), statistics.median(times["sqlite"])
    print(f"median: postgresql {pg:.1f} s, sqlite {lite:.1f} s, ratio {pg / lite:.2f}")


if __name__ == "__main__":
    main()
