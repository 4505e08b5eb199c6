"""`treegen sim serve`: the offline OpenAI-compatible simulator on a local port."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from treegen.render import LazyConsole

console = LazyConsole()


def __getattr__(name: str) -> Any:
    """``SimConfig`` and ``SimServer`` on first use: the simulator (and its tokenizer) is not
    imported by every CLI start (issue 12: start-up CPU). Tests may replace ``SimServer``."""
    if name in ("SimConfig", "SimServer"):
        from treegen.sim import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

sim_app = typer.Typer(help="The offline LLM simulator (everything it serves is simulated).", no_args_is_help=True)


@sim_app.command("serve")
def serve_cmd(
    pool: Optional[Path] = typer.Option(None, "--pool", help="JSONL pool in the unified format to draw replies from; default: a synthetic pool."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Added latency per request, in ms."),
    jitter_ms: float = typer.Option(0.0, "--jitter-ms", help="Uniform random extra latency, up to this many ms."),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute; over it: 429 with Retry-After."),
    tpm: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute (prompt + max_tokens); over it: 429."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Share of requests answered 500/503."),
    timeout_rate: float = typer.Option(0.0, "--timeout-rate", help="Share of requests that hang before answering."),
    hang_seconds: float = typer.Option(30.0, "--hang-seconds", help="How long a hanging request hangs."),
    malformed_rate: float = typer.Option(0.0, "--malformed-rate", help="Share of replies with broken JSON or prose only."),
    truncate_rate: float = typer.Option(0.0, "--truncate-rate", help="Share of replies cut mid-object (finish_reason length)."),
    wrong_count_rate: float = typer.Option(0.0, "--wrong-count-rate", help="Share of replies with more or fewer than k items."),
    label_flip_rate: float = typer.Option(0.0, "--label-flip-rate", help="Per item: chance its label is set to a wrong option."),
    duplicate_rate: float = typer.Option(0.0, "--duplicate-rate", help="Per item: chance it repeats an in-context or earlier item."),
    verify_accuracy: float = typer.Option(
        0.9, "--verify-accuracy",
        help="Verification requests: per candidate, chance the answer is the pool's true label (else a wrong one).",
    ),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require this bearer key (others get 401)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice."),
    refuse_response_format: Optional[List[str]] = typer.Option(
        None, "--refuse-response-format",
        help="Answer 400 to this response_format type (json_schema, json_object); repeat, or separate with commas.",
    ),
    ignore_max_tokens: bool = typer.Option(False, "--ignore-max-tokens", help="Hostile: reply far past max_tokens and report that usage."),
    usage_inflate: int = typer.Option(0, "--usage-inflate", help="Hostile: report this many completion tokens (0: the true count)."),
    body_fault: Optional[str] = typer.Option(None, "--body-fault", help="Hostile: a 200 whose body is html, empty or notjson."),
    body_fault_rate: float = typer.Option(1.0, "--body-fault-rate", help="Share of replies with the --body-fault."),
    hang_rate: float = typer.Option(0.0, "--hang-rate", help="Hostile: share of requests never answered (held until the client gives up)."),
    echo_auth: bool = typer.Option(False, "--echo-auth", help="Hostile: error bodies quote the request's Authorization header."),
    batch_delay_s: float = typer.Option(0.0, "--batch-delay-s", help="Batch API: seconds from create to completed (0: the next retrieve)."),
    batch_fail_rate: float = typer.Option(0.0, "--batch-fail-rate", help="Batch API: per request, chance of an error line (status 500)."),
    batch_expire_rate: float = typer.Option(0.0, "--batch-expire-rate", help="Batch API: per request, chance it expires (batch_expired)."),
) -> None:
    """Serve simulated chat completions at http://HOST:PORT/v1 until Ctrl-C."""
    from treegen.sim.server import SimConfig

    server_cls = globals().get("SimServer") or __getattr__("SimServer")  # a test's stand-in, if set
    refused = [t.strip() for item in refuse_response_format or [] for t in item.split(",") if t.strip()]
    config = SimConfig(
        pool_path=str(pool) if pool else None, latency_ms=latency_ms, jitter_ms=jitter_ms, rpm_limit=rpm,
        tpm_limit=tpm, error_rate=error_rate, timeout_rate=timeout_rate, hang_seconds=hang_seconds,
        malformed_rate=malformed_rate, truncate_rate=truncate_rate, wrong_count_rate=wrong_count_rate,
        label_flip_rate=label_flip_rate, duplicate_rate=duplicate_rate, api_key=api_key, seed=seed,
        refuse_response_format=refused, ignore_max_tokens=ignore_max_tokens, usage_inflate=usage_inflate,
        body_fault=body_fault, body_fault_rate=body_fault_rate, hang_rate=hang_rate, echo_auth=echo_auth,
        batch_delay_s=batch_delay_s, batch_fail_rate=batch_fail_rate, batch_expire_rate=batch_expire_rate,
        verify_accuracy=verify_accuracy,
    )
    server = server_cls(config, host, port)  # loads the pool: SeedFileError / ConfigError exit 2
    source = f"pool {pool} ({server.simulator.pool_format})" if pool else "synthetic pools"
    console.print(f"treegen simulator listening at [bold]{server.base_url}[/] ({source})", highlight=False)
    console.print(
        "[bold red]SIMULATED:[/] every reply is drawn from the pool, not written by a model. "
        "Runs against it are recorded as simulated. Stop with Ctrl-C.",
        highlight=False,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        n = server.stats()["requests"]
        console.print(f"Stopped. Served {n:,} request{'' if n == 1 else 's'}.", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `sim` sub-group to the treegen CLI."""
    app.add_typer(sim_app, name="sim")
