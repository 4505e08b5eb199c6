"""A procedural pool of correct examples, so the simulator works with no data on disk.

Every item is made from templates and word lists written here (arithmetic, comparisons of
numbers, divisibility, "is an X a kind of Y" over small taxonomies, unit conversions, the
order of days, months and letters; short passages about people, shops and timetables for
formats with a context; arithmetic word problems for the numeric formats). Labels are
computed, so they are right. Templates differ in their
wording and vocabulary, so lexical near-neighbours of an item are items of the same family:
what the simulator's similarity sampling needs.
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Callable

from treegen.errors import InputError
from treegen.task import YESNO_OPTIONS, Example, TaskFormat, canonical_number, dedup_key, normalise_text

MAX_OPTIONS = 8

# (category, article-free singular members). Written for this module.
TAXONOMY: dict[str, list[str]] = {
    "bird": ["sparrow", "robin", "eagle", "owl", "penguin", "parrot", "heron", "crow", "swan", "falcon", "pigeon", "ostrich"],
    "fish": ["salmon", "trout", "cod", "tuna", "carp", "herring", "perch", "pike", "mackerel", "sardine", "eel", "haddock"],
    "mammal": ["horse", "whale", "bat", "rabbit", "otter", "tiger", "camel", "mouse", "dolphin", "badger", "goat", "fox"],
    "reptile": ["lizard", "crocodile", "gecko", "iguana", "cobra", "python", "tortoise", "chameleon", "viper", "alligator"],
    "insect": ["beetle", "ant", "wasp", "moth", "butterfly", "cricket", "dragonfly", "ladybird", "grasshopper", "termite"],
    "tree": ["oak", "birch", "maple", "willow", "pine", "beech", "cedar", "elm", "ash", "spruce", "poplar", "chestnut"],
    "flower": ["rose", "tulip", "daisy", "lily", "orchid", "poppy", "violet", "daffodil", "sunflower", "marigold"],
    "vegetable": ["carrot", "potato", "onion", "cabbage", "leek", "turnip", "spinach", "lettuce", "radish", "parsnip", "celery"],
    "fruit": ["apple", "pear", "plum", "cherry", "mango", "banana", "peach", "apricot", "lemon", "grape", "melon", "fig"],
    "metal": ["iron", "copper", "zinc", "tin", "silver", "gold", "nickel", "lead", "aluminium", "titanium", "cobalt"],
    "musical instrument": ["violin", "trumpet", "flute", "cello", "drum", "harp", "oboe", "clarinet", "piano", "tuba", "banjo"],
    "vehicle": ["bicycle", "tram", "lorry", "bus", "van", "scooter", "tractor", "taxi", "motorcycle", "ferry", "train"],
    "piece of furniture": ["chair", "table", "sofa", "wardrobe", "bookcase", "stool", "bench", "dresser", "desk", "cupboard"],
    "tool": ["hammer", "saw", "chisel", "wrench", "screwdriver", "drill", "spanner", "pliers", "file", "trowel", "rake"],
    "herb": ["basil", "thyme", "parsley", "mint", "sage", "rosemary", "dill", "oregano", "chive", "coriander"],
    "gemstone": ["ruby", "emerald", "sapphire", "diamond", "opal", "topaz", "garnet", "amethyst", "jade", "pearl"],
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# (big unit, small unit, factor)
UNITS = [
    ("metre", "centimetre", 100), ("kilometre", "metre", 1000), ("kilogram", "gram", 1000),
    ("hour", "minute", 60), ("minute", "second", 60), ("day", "hour", 24), ("week", "day", 7),
    ("litre", "millilitre", 1000), ("dozen", "egg", 12), ("year", "month", 12),
    ("centimetre", "millimetre", 10), ("tonne", "kilogram", 1000),
]
NAMES = [
    "Ana", "Tomas", "Lena", "Omar", "Priya", "Jonas", "Mei", "Kofi", "Sara", "Diego", "Ines", "Hugo",
    "Noor", "Felix", "Yara", "Ivan", "Lucia", "Arjun", "Elsa", "Mateo", "Zara", "Bruno", "Asha", "Leo",
]
TOWNS = [
    "Brenford", "Norfield", "Ashcombe", "Dunmere", "Kelvale", "Marlow Cross", "Oakridge", "Penhallow",
    "Redwater", "Stonebury", "Thornby", "Westhaven", "Eastmoor", "Fallowdale", "Greyhill", "Lindon",
]
GOODS = ["chairs", "tables", "lamps", "rugs", "mirrors", "clocks", "vases", "baskets", "kettles", "blankets"]
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}

# A fact: question for multiple choice, its right answer, a source of wrong answers, and a
# statement-style yes/no question that is true or false on demand.
Fact = tuple[str, str, Callable[[random.Random], str], Callable[[bool], str]]


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _near_number(rng: random.Random, x: int) -> Callable[[random.Random], str]:
    def wrong(r: random.Random) -> str:
        spread = max(3, abs(x) // 5)
        while True:
            y = x + r.randint(-spread, spread)
            if y != x:
                return str(y)
    return wrong


def _arithmetic(rng: random.Random) -> Fact:
    op = rng.choice(list(OPS))
    a, b = (rng.randint(2, 30), rng.randint(2, 12)) if op == "times" else (rng.randint(10, 999), rng.randint(2, 500))
    x = OPS[op](a, b)
    wrong = _near_number(rng, x)
    phr = rng.choice(["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "Compute {a} {op} {b}."])
    q = phr.format(a=a, op=op, b=b)
    bad = wrong(rng)
    return q, str(x), wrong, lambda t: f"Is {a} {op} {b} equal to {x if t else bad}?"


def _comparison(rng: random.Random) -> Fact:
    nums = rng.sample(range(1, 10000), MAX_OPTIONS)
    big = max(nums)
    a, b = nums[0], nums[1]
    rest = iter(n for n in nums if n != big)
    def wrong(r: random.Random) -> str:
        return str(next(rest, r.randint(1, big - 1)))
    return (
        rng.choice(["Which of these numbers is the largest?", "Which number is the biggest?"]),
        str(big), wrong,
        lambda t: (f"Is {max(a, b)} greater than {min(a, b)}?" if t else f"Is {min(a, b)} greater than {max(a, b)}?"),
    )


def _divisibility(rng: random.Random) -> Fact:
    d = rng.randint(3, 13)
    m = d * rng.randint(3, 60)
    others = [m + i for i in range(1, d)]
    def wrong(r: random.Random) -> str:
        return str(r.choice(others))
    non = rng.choice(others)
    return (
        f"Which of these numbers is divisible by {d}?", str(m), wrong,
        lambda t: f"Is {m if t else non} divisible by {d}?",
    )


def _taxonomy(rng: random.Random) -> Fact:
    cat = rng.choice(list(TAXONOMY))
    member = rng.choice(TAXONOMY[cat])
    others = [w for c, ws in TAXONOMY.items() if c != cat for w in ws]
    def wrong(r: random.Random) -> str:
        return r.choice(others)
    other_cat = rng.choice([c for c in TAXONOMY if c != cat])
    phr = rng.choice(["Which of these is a kind of {c}?", "Which one of the following is {ac}?", "Name the {c} among these."])
    return (
        phr.format(c=cat, ac=_a(cat)), member, wrong,
        lambda t: f"Is {_a(member)} a kind of {cat if t else other_cat}?",
    )


def _units(rng: random.Random) -> Fact:
    big, small, f = rng.choice(UNITS)
    n = rng.randint(2, 40)
    x = n * f
    wrong_n = _near_number(rng, x)
    def wrong(r: random.Random) -> str:
        return r.choice([wrong_n(r), str(n * f * 10), str(max(1, x // 10)), str(n + f)])
    bad = wrong(rng)
    return (
        f"How many {_plural(small)} are there in {n} {_plural(big)}?", str(x), wrong,
        lambda t: f"Are there {x if t else bad} {_plural(small)} in {n} {_plural(big)}?",
    )


def _calendar(rng: random.Random) -> Fact:
    seq, what = rng.choice([(DAYS, "day"), (MONTHS, "month"), (list(LETTERS), "letter of the alphabet")])
    if what == "letter of the alphabet":  # letters do not wrap around
        step = rng.randint(1, 6)
        i = rng.randrange(len(seq) - step)
    else:
        step = rng.randint(1, 4)
        i = rng.randrange(len(seq))
    j = (i + step) % len(seq)
    right = seq[j]
    pool = [s for s in seq if s != right]
    def wrong(r: random.Random) -> str:
        return r.choice(pool)
    count = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}[step]
    unit = what.split()[0] + ("" if step == 1 else "s")
    q = f"Which {what} comes {count} {unit} after {seq[i]}?"
    bad = rng.choice(pool)
    return q, right, wrong, lambda t: f"Does {right if t else bad} come {count} {unit} after {seq[i]}?"


def _earlier(rng: random.Random) -> Fact:
    seq = rng.choice([DAYS, MONTHS])
    i, j = sorted(rng.sample(range(len(seq)), 2))
    what = "week" if seq is DAYS else "year"
    first = seq[i]
    pool = seq[i + 1 :]
    def wrong(r: random.Random) -> str:
        return r.choice(pool) if pool else r.choice(seq)
    return (
        f"Which of these comes earliest in the {what}?", first, wrong,
        lambda t: (f"Is {seq[i]} earlier in the {what} than {seq[j]}?" if t else f"Is {seq[j]} earlier in the {what} than {seq[i]}?"),
    )


FACTS = [_arithmetic, _comparison, _divisibility, _taxonomy, _units, _calendar, _earlier]


# Passages for formats with a context: the answer is in the passage.
def _passage_ages(rng: random.Random) -> tuple[str, Fact]:
    people = rng.sample(NAMES, 4)
    ages = rng.sample(range(18, 80), 4)
    ctx = " ".join(f"{p} is {a} years old." for p, a in zip(people, ages))
    town = rng.choice(TOWNS)
    ctx = f"Four neighbours live on the same street in {town}. " + ctx
    oldest = people[ages.index(max(ages))]
    p, q = rng.sample(range(4), 2)
    older, younger = (p, q) if ages[p] > ages[q] else (q, p)
    x = rng.randrange(4)
    def wrong(r: random.Random) -> str:
        return str(r.choice([a for a in range(18, 80) if a != ages[x]]))
    yes = lambda t: (f"Is {people[older]} older than {people[younger]}?" if t else f"Is {people[younger]} older than {people[older]}?")
    if rng.random() < 0.5:
        return ctx, (f"How old is {people[x]}?", str(ages[x]), wrong, yes)
    others = [n for n in NAMES if n != oldest]
    return ctx, (f"Who is the oldest of the four neighbours in {town}?", oldest, lambda r: r.choice(others), yes)


def _passage_shop(rng: random.Random) -> tuple[str, Fact]:
    goods = rng.sample(GOODS, 3)
    counts = rng.sample(range(5, 300), 3)
    town = rng.choice(TOWNS)
    owner = rng.choice(NAMES)
    ctx = (
        f"{owner} runs a furniture shop in {town}. This week the shop has "
        + ", ".join(f"{c} {g}" for c, g in zip(counts[:2], goods[:2]))
        + f" and {counts[2]} {goods[2]} in stock."
    )
    i, j = rng.sample(range(3), 2)
    more, less = (i, j) if counts[i] > counts[j] else (j, i)
    wrong = _near_number(rng, counts[i])
    return ctx, (
        f"How many {goods[i]} does the shop in {town} have in stock?", str(counts[i]), wrong,
        lambda t: (f"Does the shop have more {goods[more]} than {goods[less]}?" if t else f"Does the shop have more {goods[less]} than {goods[more]}?"),
    )


def _passage_timetable(rng: random.Random) -> tuple[str, Fact]:
    a, b = rng.sample(TOWNS, 2)
    days = sorted(rng.sample(range(7), 3))
    hour, minute = rng.randint(6, 21), rng.choice([0, 10, 15, 20, 30, 40, 45, 50])
    ctx = (
        f"The train from {a} to {b} leaves at {hour:02d}:{minute:02d} on "
        f"{DAYS[days[0]]}, {DAYS[days[1]]} and {DAYS[days[2]]}. The journey takes {rng.randint(20, 180)} minutes."
    )
    off = [d for d in range(7) if d not in days]
    on_day, off_day = DAYS[rng.choice(days)], DAYS[rng.choice(off)]
    def wrong(r: random.Random) -> str:
        return f"{r.randint(6, 21):02d}:{r.choice([5, 25, 35, 55]):02d}"
    return ctx, (
        f"At what time does the train from {a} to {b} leave?", f"{hour:02d}:{minute:02d}", wrong,
        lambda t: f"Does the train from {a} to {b} run on {on_day if t else off_day}?",
    )


PASSAGES = [_passage_ages, _passage_shop, _passage_timetable]


def _options(rng: random.Random, right: str, wrong: Callable[[random.Random], str], k: int) -> list[str] | None:
    opts = [right]
    seen = {normalise_text(right)}
    for _ in range(k * 30):
        if len(opts) == k:
            break
        w = wrong(rng)
        if normalise_text(w) not in seen:
            seen.add(normalise_text(w))
            opts.append(w)
    if len(opts) < k:
        return None
    rng.shuffle(opts)
    return opts


def synthetic_example(fmt: TaskFormat, rng: random.Random) -> Example | None:
    """One random example of ``fmt``, or None when the drawn template cannot fill it."""
    context = None
    if fmt.has_context:
        context, fact = rng.choice(PASSAGES)(rng)
    else:
        fact = rng.choice(FACTS)(rng)
    question, right, wrong, statement = fact
    if fmt.kind == "yesno":
        truth = rng.random() < 0.5
        return Example(statement(truth), YESNO_OPTIONS, "True" if truth else "False", context)
    opts = _options(rng, right, wrong, fmt.n_options)
    if opts is None:
        return None
    return Example(question, tuple(opts), right, context)


# ---------------------------------------------------------------- numeric word problems
# Each returns (setup, ask, answer): the closed-book question is "setup ask"; an open-book one
# puts the setup in the context. An empty setup (a bare sum) only makes closed-book items.
Problem = tuple[str, str, Fraction]
FRUITS = ["apples", "pears", "plums", "oranges", "lemons", "peaches", "cherries", "figs"]


def _np_bare(rng: random.Random) -> Problem:
    q, right, _w, _s = rng.choice([_arithmetic, _units])(rng)
    return "", q, Fraction(int(right))


def _np_change(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(GOODS)
    count, price = rng.randint(2, 9), rng.randint(3, 40)
    note = next(b for b in (50, 100, 200, 500) if b > count * price)
    return (
        f"{name} buys {count} {item} at {price} dollars each and pays with a {note}-dollar note.",
        f"How much change, in dollars, does {name} get?", Fraction(note - count * price),
    )


def _np_share(rng: random.Random) -> Problem:
    name, fruit = rng.choice(NAMES), rng.choice(FRUITS)
    friends, each = rng.randint(2, 12), rng.randint(2, 25)
    kept = rng.randint(1, 9)
    return (
        f"{name} picks {friends * each + kept} {fruit}, keeps {kept} and shares the rest equally among {friends} friends.",
        f"How many {fruit} does each friend get?", Fraction(each),
    )


def _np_stock(rng: random.Random) -> Problem:
    town, item = rng.choice(TOWNS), rng.choice(GOODS)
    start, sold, delivered = rng.randint(40, 400), rng.randint(5, 39), rng.randint(10, 200)
    day = rng.choice(DAYS)
    return (
        f"A shop in {town} has {start} {item}. It sells {sold} on {day} and then receives a delivery of {delivered}.",
        f"How many {item} does the shop have now?", Fraction(start - sold + delivered),
    )


def _np_distance(rng: random.Random) -> Problem:
    a, b = rng.sample(TOWNS, 2)
    speed = rng.choice([40, 45, 50, 60, 72, 80, 90, 120])
    hours, said = rng.choice([
        (Fraction(1), "1 hour"), (Fraction(2), "2 hours"), (Fraction(3), "3 hours"), (Fraction(4), "4 hours"),
        (Fraction(5), "5 hours"), (Fraction(3, 2), "an hour and a half"), (Fraction(5, 2), "two and a half hours"),
    ])
    return (
        f"A coach from {a} to {b} drives at {speed} kilometres per hour for {said}.",
        "How many kilometres does it travel?", speed * hours,
    )


def _np_ages(rng: random.Random) -> Problem:
    a, b = rng.sample(NAMES, 2)
    age, gap, later = rng.randint(5, 50), rng.randint(1, 30), rng.randint(2, 20)
    return (
        f"{a} is {age} years old. {b} is {gap} years older than {a}.",
        f"How old will {b} be in {later} years?", Fraction(age + gap + later),
    )


def _np_rope(rng: random.Random) -> Problem:
    pieces = rng.choice([2, 4, 5, 8])
    length = rng.randint(3, 60)
    what = rng.choice(["rope", "ribbon", "plank", "pipe", "cable"])
    return (
        f"A {what} {length} metres long is cut into {pieces} pieces of equal length.",
        "How long is each piece, in metres?", Fraction(length, pieces),
    )


def _np_sale(rng: random.Random) -> Problem:
    item = rng.choice(["jacket", "lamp", "bicycle", "kettle", "rug", "clock", "desk"])
    price, off = 20 * rng.randint(1, 30), rng.choice([10, 20, 25, 50])
    return (
        f"A {item} costs {price} dollars. This week it is sold at {off}% off.",
        "What is the sale price in dollars?", Fraction(price * (100 - off), 100),
    )


def _np_savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    weekly, weeks, start = rng.randint(3, 40), rng.randint(2, 30), rng.randint(0, 50)
    return (
        f"{name} has {start} dollars and saves {weekly} dollars every week.",
        f"How many dollars will {name} have after {weeks} weeks?", Fraction(start + weekly * weeks),
    )


def _np_rows(rng: random.Random) -> Problem:
    what = rng.choice(["chairs", "trees", "tulips", "desks", "tents"])
    rows, per, missing = rng.randint(3, 20), rng.randint(4, 15), rng.randint(1, 3)
    return (
        f"A field has {rows} rows of {what} with {per} {what} in each row, but {missing} rows have one {what[:-1]} missing.",
        f"How many {what} are there in all?", Fraction(rows * per - missing),
    )


NUMERIC_PROBLEMS = [_np_bare, _np_change, _np_share, _np_stock, _np_distance, _np_ages, _np_rope, _np_sale,
                    _np_savings, _np_rows]


def numeric_example(rng: random.Random, has_context: bool = False) -> Example | None:
    """One arithmetic word problem and its true answer, or None when the drawn template does
    not fit (a bare sum has no setup to put in a context)."""
    setup, ask, answer = rng.choice(NUMERIC_PROBLEMS)(rng)
    # Every template's answer is an integer or a short exact decimal (halves, quarters, eighths).
    label = canonical_number(answer.numerator if answer.denominator == 1 else answer.numerator / answer.denominator)
    if label is None:
        return None
    if has_context:
        return Example(ask, (), label, setup) if setup else None
    return Example(f"{setup} {ask}".strip(), (), label, None)


def numeric_pool(n: int = 5000, seed: int = 0, has_context: bool = False) -> list[Example]:
    """``n`` distinct arithmetic word problems with their true answers (format ``numeric``,
    or ``numeric_open`` with the problem's setup as the context); the same for the same seed."""
    fmt = TaskFormat("numeric", 0, has_context)
    rng = random.Random(f"treegen-synthetic:{fmt.name}:{seed}")
    out: list[Example] = []
    seen: set[str] = set()
    for _ in range(n * 20):  # bounded, like synthetic_pool
        if len(out) >= n:
            break
        ex = numeric_example(rng, has_context)
        if ex is None:
            continue
        key = dedup_key(ex)
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return out


def synthetic_pool(fmt: TaskFormat, n: int = 5000, seed: int = 0) -> list[Example]:
    """``n`` distinct (by dedup key) correct examples of ``fmt``, the same for the same seed."""
    if fmt.kind == "numeric":
        return numeric_pool(n, seed, fmt.has_context)
    if fmt.kind == "mcqa" and not 2 <= fmt.n_options <= MAX_OPTIONS:
        raise InputError(
            f"The synthetic pool makes multiple-choice examples with 2 to {MAX_OPTIONS} options, "
            f"not {fmt.n_options}. Give a pool file of your own with --pool."
        )
    rng = random.Random(f"treegen-synthetic:{fmt.name}:{seed}")
    out: list[Example] = []
    seen: set[str] = set()
    labels = {"True": 0, "False": 0}
    for _ in range(n * 20):  # bounded: a small format may hold fewer than n distinct items
        if len(out) >= n:
            break
        ex = synthetic_example(fmt, rng)
        if ex is None:
            continue
        key = dedup_key(ex)
        if key in seen:
            continue
        if fmt.kind == "yesno":
            # False statements are more varied, so they would outnumber true ones: balance.
            if labels[ex.label] > min(labels.values()) + 10:
                continue
            labels[ex.label] += 1
        seen.add(key)
        out.append(ex)
    return out
