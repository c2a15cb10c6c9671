"""A reliability sweep: bad inputs and faults against the public API and the command line.

Each case is run on the tiny model (offline, fast) and classified automatically:

- ``correct``: a valid result that the case defines as correct;
- ``clear error``: a `SteerlensError` (the CLI: a non-zero exit and one ``steerlens: error:``
  line) whose message is non-empty and names the problem (the case's ``mentions``);

or a failure:

- ``raw error``: any other exception (or a steerlens error whose message misses the problem);
- ``silent``: a result that is not what the case defines as correct, with no error (also: a
  case that left hooks, gradients or changed weights on the shared model);
- ``crash``: the process died or hung;
- ``lost``: finished work or an existing file destroyed.

Cases run in a worker process, so a crash loses one case, not the sweep.

The cases live in benchmarks/reliability/, one module per area (files, vector, optimizer, data,
steering, generation, evaluation, baselines, interop, studies, model, cli), each a table of rows;
benchmarks/reliability/runner.py holds the framework (the context, classification, the workers).

Run: .venv/bin/python benchmarks/reliability_sweep.py [--only AREA]
Writes benchmarks/results/reliability_sweep.json (one row per case: area, case, outcome, message).
"""

from __future__ import annotations

from pathlib import Path

from reliability.runner import main

RESULTS = Path(__file__).parent / "results" / "reliability_sweep.json"

if __name__ == "__main__":
    main(__doc__.splitlines()[0], script=Path(__file__), results=RESULTS)
