"""A bundled, offline, difficulty-graded visual reasoning set (`path: builtin:visual`).

The multimodal counterpart of `builtin_math`: nothing is downloaded or committed. Each problem is
a small picture drawn with PIL from a scene, and the scene is drawn from its own
`random.Random` seeded by (seed, index), so problem i is the same whatever n is. Levels take turns
(index i has level levels[i % len(levels)]) and, within a level, so do the three kinds (kind
kinds[(i // len(levels)) % len(kinds)]), so every nine problems hold each (level, kind) once.

- count:  "How many red shapes are in the image?" Shapes sit one per grid cell, never touching.
          easy: 112 px, a 3×3 grid, 1-4 targets and one distractor colour (circles, squares);
          medium: 168 px, 4×4, 2-6 targets, two distractor colours, + triangles;
          hard: 224 px, 5×5, 3-9 targets, three distractor colours, + diamonds, mixed sizes.
- bar:    a bar chart with a labelled y axis and horizontal gridlines.
          easy: 3 bars, values 1-5 on gridlines 1 apart: "What is the value of the red bar?";
          medium: 4 bars, values 1-10, gridlines 2 apart (odd values fall between lines);
          hard: 5 bars, values 1-20, gridlines 5 apart, and the question asks for the difference
          between two bars.
- length: two segments drawn along a square grid.
          easy: two horizontal segments at least 3 units apart in length, "which is longer? 1 or 2";
          medium: one horizontal and one vertical, 1-2 units apart, the same question;
          hard: any orientations, "how many units longer is the longer one?".

Every answer is a non-negative integer as a string ("3", "12"), which math-verify parses. Each
row keeps its scene (plain JSON: shapes, bar values, segment ends) so that tests and the
cold-start pool can derive answers and reasoning from it. Pixel geometry is exact (no
anti-aliasing on shapes, integer sizes per unit), so an answer can be read back off the pixels.
Images are 112-224 px (16-64 Qwen2.5-VL vision tokens), small enough for the tiny model.

It is a mechanics set: it exercises images through both stages on tiny models, it does not
show learning, and it is not a benchmark.

Train and test splits (`split="train"` / `"test"`, `path: builtin:visual:test`). Problems are
partitioned by a stable hash of their canonical JSON key, `json.dumps([question, scene],
sort_keys=True)`: a problem is in the test split iff `int(sha1(key).hexdigest(), 16) % 5 == 0`
(`split_of`). A train problem whose scene falls in the test split keeps drawing scenes from its
own rng until it gets a train-split one, and a test problem draws until it gets a test-split
problem not already in the set, so no train problem of any seed or size can equal a test problem:
the split is disjoint by construction, not by luck. Most train problems are the ones drawn before
the split existed. The test split has distinct problems, `TEST_SIZE` = 45 by default (5 per
(level, kind); the smallest scene space, easy bar charts, holds 45,000 scenes).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COLORS", "KINDS", "LEVELS", "SOURCE", "SPLITS", "TEST_SIZE",
    "generate_problems", "make_scene", "render", "split_of", "write_jsonl",
]

LEVELS = ("easy", "medium", "hard")
KINDS = ("count", "bar", "length")
SPLITS = ("train", "test")
SOURCE = "builtin:visual"
TEST_SIZE = 45  # 5 per (level, kind)
_TEST_MODULUS = 5  # one problem in five is held out
_MAX_DRAWS = 10_000  # a test problem is found in ~5 draws; this many misses means the space ran out

# Saturated colours with r, g, b all different: never confused with the greys of white
# background, gridlines, black axes or anti-aliased text.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (30, 160, 60),
    "orange": (245, 140, 20),
    "purple": (140, 60, 180),
    "brown": (130, 80, 30),
}
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (205, 205, 205)

_COUNT = {
    "easy": {
        "size": 112, "grid": 3, "target": (1, 4), "distractors": 1, "each": (1, 3), "shapes": ("circle", "square"),
    },
    "medium": {
        "size": 168, "grid": 4, "target": (2, 6), "distractors": 2, "each": (1, 3),
        "shapes": ("circle", "square", "triangle"),
    },
    "hard": {
        "size": 224, "grid": 5, "target": (3, 9), "distractors": 3, "each": (2, 4),
        "shapes": ("circle", "square", "triangle", "diamond"),
    },
}
_BAR = {
    "easy": {"size": 168, "bars": 3, "vmax": 5, "step": 1, "ask": "value"},
    "medium": {"size": 168, "bars": 4, "vmax": 10, "step": 2, "ask": "value"},
    "hard": {"size": 224, "bars": 5, "vmax": 20, "step": 5, "ask": "difference"},
}
_LENGTH = {
    "easy": {"size": 112, "unit": 8, "orients": ("h", "h"), "diff": (3, 9), "ask": "which"},
    "medium": {"size": 168, "unit": 8, "orients": ("h", "v"), "diff": (1, 2), "ask": "which"},
    "hard": {"size": 168, "unit": 8, "orients": None, "diff": (1, 8), "ask": "difference"},
}
# Bar chart layout (pixels): room for the y labels on the left, margins elsewhere.
_BAR_LEFT, _BAR_TOP, _BAR_BOTTOM, _BAR_RIGHT = 26, 8, 10, 6
_STROKE = 3  # segment thickness (pixels)


# ---------------------------------------------------------------------------------------- scenes
def _count_scene(rng: random.Random, level: str) -> dict:
    cfg = _COUNT[level]
    size, grid = cfg["size"], cfg["grid"]
    cell = size // grid
    colors = rng.sample(list(COLORS), 1 + cfg["distractors"])
    target = colors[0]
    wanted = [target] * rng.randint(*cfg["target"])
    for c in colors[1:]:
        wanted += [c] * rng.randint(*cfg["each"])
    cells = rng.sample(range(grid * grid), len(wanted))
    shapes = []
    for color, index in zip(wanted, cells):
        row, col = divmod(index, grid)
        r = rng.randint(int(cell * 0.22), int(cell * 0.36)) if level == "hard" else int(cell * 0.3)
        slack = cell // 2 - r - 2  # the shape stays 2 px inside its cell: shapes never touch
        cx = col * cell + cell // 2 + rng.randint(-slack, slack)
        cy = row * cell + cell // 2 + rng.randint(-slack, slack)
        shape = rng.choice(cfg["shapes"])
        shapes.append({"shape": shape, "color": color, "row": row, "col": col, "cx": cx, "cy": cy, "r": r})
    shapes.sort(key=lambda s: (s["row"], s["col"]))
    return {"kind": "count", "size": size, "grid": grid, "color": target, "shapes": shapes}


def _bar_scene(rng: random.Random, level: str) -> dict:
    cfg = _BAR[level]
    colors = rng.sample(list(COLORS), cfg["bars"])
    values = [rng.randint(1, cfg["vmax"]) for _ in colors]
    scene = {"kind": "bar", "size": cfg["size"], "vmax": cfg["vmax"], "step": cfg["step"]}
    scene.update(colors=colors, values=values)
    if cfg["ask"] == "value":
        scene["ask"] = [rng.randrange(len(colors))]
    else:
        while len(set(values)) < 2:  # a difference needs two different bars
            values[rng.randrange(len(values))] = rng.randint(1, cfg["vmax"])
        a, b = rng.sample(range(len(colors)), 2)
        while values[a] == values[b]:
            a, b = rng.sample(range(len(colors)), 2)
        scene["ask"] = [a, b] if values[a] > values[b] else [b, a]  # larger first: the answer is positive
    return scene


def _segment(rng: random.Random, orient: str, length: int, cells: int) -> dict:
    """A segment of `length` grid units with both ends on grid points (at least 1 unit from the border)."""
    along = rng.randint(1, cells - 1 - length)
    across = rng.randint(1, cells - 1)
    if orient == "h":
        return {"orient": "h", "x": along, "y": across, "length": length}
    return {"orient": "v", "x": across, "y": along, "length": length}


def _apart(a: dict, b: dict) -> bool:
    """True when the two segments' boxes, grown by one unit, do not meet (no touching, no crossing)."""

    def box(s):
        x1 = s["x"] + (s["length"] if s["orient"] == "h" else 0)
        y1 = s["y"] + (s["length"] if s["orient"] == "v" else 0)
        return s["x"] - 1, s["y"] - 1, x1 + 1, y1 + 1

    ax0, ay0, ax1, ay1 = box(a)
    bx0, by0, bx1, by1 = box(b)
    return ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0


def _length_scene(rng: random.Random, level: str) -> dict:
    cfg = _LENGTH[level]
    cells = cfg["size"] // cfg["unit"]
    longest = cells - 3
    colors = rng.sample(list(COLORS), 2)
    while True:  # rejection sampling: deterministic, and a fit is found in a few tries
        orients = cfg["orients"] or (rng.choice("hv"), rng.choice("hv"))
        if rng.randrange(2):
            orients = orients[::-1]
        diff = rng.randint(*cfg["diff"])
        short = rng.randint(2, longest - diff)
        lengths = [short, short + diff] if rng.randrange(2) else [short + diff, short]
        segments = [_segment(rng, o, n, cells) for o, n in zip(orients, lengths)]
        if _apart(*segments):
            break
    for seg, color in zip(segments, colors):
        seg["color"] = color
    return {"kind": "length", "size": cfg["size"], "unit": cfg["unit"], "ask": cfg["ask"], "segments": segments}


_SCENES = {"count": _count_scene, "bar": _bar_scene, "length": _length_scene}


def make_scene(kind: str, level: str, rng: random.Random) -> dict:
    """The plain-JSON parameters of one picture (what `render` draws and the answer follows from)."""
    return {**_SCENES[kind](rng, level), "level": level}


# ---------------------------------------------------------------------------------------- text
def _question_answer(scene: dict) -> tuple[str, int]:
    kind = scene["kind"]
    if kind == "count":
        count = sum(s["color"] == scene["color"] for s in scene["shapes"])
        return f"How many {scene['color']} shapes are in the image?", count
    if kind == "bar":
        colors, values = scene["colors"], scene["values"]
        if len(scene["ask"]) == 1:
            i = scene["ask"][0]
            return f"What is the value of the {colors[i]} bar in the chart?", values[i]
        a, b = scene["ask"]
        question = f"By how much does the value of the {colors[a]} bar exceed the value of the {colors[b]} bar?"
        return question, values[a] - values[b]
    one, two = scene["segments"]
    if scene["ask"] == "which":
        question = (
            f"Which segment is longer: the {one['color']} one (1) or the {two['color']} one (2)? "
            "Answer with 1 or 2."
        )
        return question, 1 if one["length"] > two["length"] else 2
    question = (
        f"The grid squares are 1 unit wide. How many units longer is the longer segment "
        f"than the shorter one (the {one['color']} and the {two['color']} segment)?"
    )
    return question, abs(one["length"] - two["length"])


# ---------------------------------------------------------------------------------------- drawing
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _draw_shape(draw, s: dict) -> None:
    cx, cy, r, fill = s["cx"], s["cy"], s["r"], COLORS[s["color"]]
    if s["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif s["shape"] == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif s["shape"] == "triangle":
        h = (r * 7) // 8
        draw.polygon([(cx, cy - r), (cx - h, cy + r // 2), (cx + h, cy + r // 2)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def bar_geometry(scene: dict) -> dict[str, Any]:
    """Pixel layout of a bar chart: baseline y, pixels per unit, bar width and each bar's left x."""
    size, n = scene["size"], len(scene["values"])
    ppu = (size - _BAR_TOP - _BAR_BOTTOM) // scene["vmax"]
    base = _BAR_TOP + ppu * scene["vmax"]
    slot = (size - _BAR_LEFT - _BAR_RIGHT) // n
    width = (slot * 2) // 3
    lefts = [_BAR_LEFT + i * slot + (slot - width) // 2 for i in range(n)]
    return {"baseline": base, "ppu": ppu, "width": width, "lefts": lefts}


def _draw_bars(draw, scene: dict) -> None:
    g = bar_geometry(scene)
    base, ppu, size = g["baseline"], g["ppu"], scene["size"]
    font = _font(9)
    for v in range(0, scene["vmax"] + 1, scene["step"]):
        y = base - v * ppu
        if v:
            draw.line((_BAR_LEFT, y, size - _BAR_RIGHT, y), fill=GRID)
        draw.text((_BAR_LEFT - 4, y), str(v), fill=BLACK, font=font, anchor="rm")
    for left, color, value in zip(g["lefts"], scene["colors"], scene["values"]):
        # Exactly value·ppu pixels tall, standing on the baseline.
        draw.rectangle((left, base - value * ppu, left + g["width"] - 1, base - 1), fill=COLORS[color])
    draw.line((_BAR_LEFT - 1, _BAR_TOP - 2, _BAR_LEFT - 1, base), fill=BLACK)  # y axis
    draw.line((_BAR_LEFT - 1, base, size - _BAR_RIGHT, base), fill=BLACK)  # x axis


def _draw_segments(draw, scene: dict) -> None:
    size, unit = scene["size"], scene["unit"]
    for k in range(unit, size, unit):
        draw.line((k, 0, k, size - 1), fill=GRID)
        draw.line((0, k, size - 1, k), fill=GRID)
    half = _STROKE // 2
    for seg in scene["segments"]:
        x, y, n = seg["x"] * unit, seg["y"] * unit, seg["length"] * unit
        # Exactly n pixels long along the grid line, _STROKE pixels thick across it.
        box = (x, y - half, x + n - 1, y + half) if seg["orient"] == "h" else (x - half, y, x + half, y + n - 1)
        draw.rectangle(box, fill=COLORS[seg["color"]])


def render(scene: dict):
    """The scene as an RGB `PIL.Image` (square, scene["size"] pixels)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (scene["size"], scene["size"]), WHITE)
    draw = ImageDraw.Draw(image)
    if scene["kind"] == "count":
        for s in scene["shapes"]:
            _draw_shape(draw, s)
    elif scene["kind"] == "bar":
        _draw_bars(draw, scene)
    else:
        _draw_segments(draw, scene)
    return image


# ---------------------------------------------------------------------------------------- sets
def _check(name: str, values: tuple, allowed: tuple) -> tuple:
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{name} must be a non-empty subset of {allowed}; got {values!r}")
    return values


def split_of(problem: dict) -> str:
    """The split of a problem: "test" iff int(sha1(key).hexdigest(), 16) % 5 == 0, else "train",
    where key = json.dumps([question, scene], sort_keys=True)."""
    key = json.dumps([problem["question"], problem["scene"]], sort_keys=True)
    return "test" if int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % _TEST_MODULUS == 0 else "train"


def _draw(kind: str, level: str, rng: random.Random, split: str, taken: set[str]) -> tuple[dict, str, int]:
    """(scene, question, answer) of the first scene drawn from rng that is in `split` and not taken."""
    for _ in range(_MAX_DRAWS):
        scene = make_scene(kind, level, rng)
        question, answer = _question_answer(scene)
        if split_of({"question": question, "scene": scene}) == split:
            key = json.dumps([question, scene], sort_keys=True)
            if key not in taken:
                taken.add(key)
                return scene, question, answer
    raise ValueError(
        f"builtin:visual found no new {split} problem of level {level!r}, kind {kind!r} in {_MAX_DRAWS} draws; "
        f"ask for fewer test problems (TEST_SIZE={TEST_SIZE})"
    )


def generate_problems(
    n: int,
    seed: int = 0,
    levels: Sequence[str] = LEVELS,
    kinds: Sequence[str] = KINDS,
    images: bool = True,
    split: str = "train",
) -> list[dict]:
    """n problems of a split as dicts with keys id, question, answer (a string), level, kind, scene,
    images, source.

    "images" is a list holding one RGB `PIL.Image` (or [] when `images=False`: scenes only).
    Deterministic in (seed, index), independent of PYTHONHASHSEED: problem i draws scenes from its
    own rng until one is in `split` (and, for the test split, not already drawn). Ids are
    f"builtin-visual-{seed}-{i}" (train) and f"builtin-visual-test-{seed}-{i}" (test).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    levels = _check("levels", tuple(levels), LEVELS)
    kinds = _check("kinds", tuple(kinds), KINDS)
    prefix = "builtin-visual-test" if split == "test" else "builtin-visual"
    taken: set[str] = set()  # keys of the test problems so far: test problems are distinct
    problems = []
    for i in range(n):
        level = levels[i % len(levels)]
        kind = kinds[(i // len(levels)) % len(kinds)]
        rng = random.Random(f"{prefix}/{seed}/{i}")
        # Train problems may repeat, so each one checks against nothing.
        scene, question, answer = _draw(kind, level, rng, split, taken if split == "test" else set())
        problems.append(
            {
                "id": f"{prefix}-{seed}-{i}",
                "question": question,
                "answer": str(answer),
                "level": level,
                "kind": kind,
                "scene": scene,
                "images": [render(scene)] if images else [],
                "source": SOURCE,
            }
        )
    return problems


def write_jsonl(
    path: str | Path,
    n: int,
    seed: int = 0,
    levels: Sequence[str] = LEVELS,
    kinds: Sequence[str] = KINDS,
    split: str = "train",
) -> Path:
    """Write `generate_problems(...)` as JSON lines at path, each image as a PNG in `<stem>_images/`.

    Rows hold the image paths relative to the jsonl's folder (how `PromptDataModule` resolves
    them). Returns the path.
    """
    path = Path(path)
    folder = path.parent / f"{path.stem}_images"
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate_problems(n, seed, levels, kinds, split=split):
            names = []
            for k, image in enumerate(row["images"]):
                name = f"{folder.name}/{row['id']}-{k}.png"
                image.save(path.parent / name)
                names.append(name)
            f.write(json.dumps({**row, "images": names}) + "\n")
    return path
