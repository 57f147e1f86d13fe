"""Encoder effort levels (torch-free, so the command line can name them without importing the model code).

Effort 1 is the analysis transform alone; each higher level spends more gradient steps refining the latents
(see refine.py). Decoding cost never depends on the effort.
"""

EFFORT_ITERATIONS = {1: 0, 2: 4, 3: 8, 4: 16, 5: 32}
MIN_EFFORT, MAX_EFFORT = min(EFFORT_ITERATIONS), max(EFFORT_ITERATIONS)
DEFAULT_EFFORT = 1


def check_effort(effort: int) -> int:
    from .errors import VaecodecError

    if effort not in EFFORT_ITERATIONS:
        raise VaecodecError(f"effort must be {MIN_EFFORT}..{MAX_EFFORT}, got {effort}")
    return effort
