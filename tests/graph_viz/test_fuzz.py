"""Fuzz: truncated, mutated and shuffled fixtures parse (and map, and lay out) without exceptions."""

import pathlib
import random

from graph_viz.main import model_to_script_json
from graph_viz.model import build_model
from pytorch_scripts_common.inductor_log import parse_inductor_log_text

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"
NUM_VARIANTS = 1200
HOSTILE = [
    "</script><img src=x onerror=alert(1)>",
    "\x00",
    "'''",
    "r'''",
    ")",
    "(",
    "[",
    "=====",
    '"',
    "\u2028",
]


def mutate(lines: list[str], rng: random.Random) -> list[str]:
    lines = list(lines)
    choice = rng.randrange(7)
    if choice == 0:  # truncate anywhere (also mid-line)
        cut = rng.randrange(len(lines) + 1)
        lines = lines[:cut]
        if lines and rng.random() < 0.5:
            lines[-1] = lines[-1][: rng.randrange(len(lines[-1]) + 1)]
    elif choice == 1:  # shuffle a window of lines
        start = rng.randrange(len(lines))
        window = lines[start : start + rng.randint(2, 60)]
        rng.shuffle(window)
        lines[start : start + len(window)] = window
    elif choice == 2:  # delete a block
        start = rng.randrange(len(lines))
        del lines[start : start + rng.randint(1, 40)]
    elif choice == 3:  # duplicate a block
        start = rng.randrange(len(lines))
        lines[start:start] = lines[start : start + rng.randint(1, 40)]
    elif choice == 4:  # corrupt characters in a few lines
        for _ in range(rng.randint(1, 10)):
            i = rng.randrange(len(lines))
            line = lines[i]
            pos = rng.randrange(len(line) + 1)
            lines[i] = line[:pos] + rng.choice(HOSTILE) + line[pos + rng.randint(0, 5) :]
    elif choice == 5:  # drop indentation / strip prefixes
        for _ in range(rng.randint(1, 20)):
            i = rng.randrange(len(lines))
            lines[i] = lines[i].lstrip() if rng.random() < 0.5 else lines[i][rng.randint(0, 30) :]
    else:  # splice two distant parts together
        a, b = sorted(rng.randrange(len(lines)) for _ in range(2))
        lines = lines[:a] + lines[b:]
    return lines


def test_fuzzed_fixtures_never_raise():
    # Every form: short (torch 2.13, 2.10), default and TORCH_TRACE (2.10), hand-written Triton; the
    # files under 180 kB keep the 1,200 variants fast. Of the user-program logs (torch_2_13/,
    # torch_2_9/), two small ones with their new forms: subgraph functions, an extern-only module.
    user_programs = {"torch_2_13/short/cond_train.log", "torch_2_13/short/custom_op_train.log"}
    sources = [
        p
        for p in sorted(FIXTURES.rglob("*.log"))
        if p.stat().st_size < 180_000
        and (p.parts[-3] not in ("torch_2_13", "torch_2_9") or "/".join(p.parts[-3:]) in user_programs)
    ]
    assert {"/".join(p.parts[-3:]) for p in sources} >= user_programs
    assert {p.parent.name for p in sources} >= {"logs", "default", "short", "triton_handwritten"}
    assert any(p.parent.name.endswith("_trace") for p in sources)
    texts = [p.read_text().splitlines() for p in sources]
    rng = random.Random(0)
    num_with_warnings = 0
    for variant in range(NUM_VARIANTS):
        lines = texts[variant % len(texts)]
        for _ in range(rng.randint(1, 3)):
            lines = mutate(lines, rng) or ["x"]
        parsed = parse_inductor_log_text("\n".join(lines))
        model = build_model(parsed, f"variant {variant}")
        assert "<" not in model_to_script_json(model)
        num_with_warnings += parsed.num_warnings > 0
    # The mutations do real damage: most variants warn (a fuzzer that never hurts proves nothing).
    assert num_with_warnings > NUM_VARIANTS // 2
