"""The ``misalign`` command line: the app and what its commands share. Commands live in :mod:`misalign.cli.data`,
:mod:`misalign.cli.bench` (Stage II), :mod:`misalign.cli.build` (Stage I) and :mod:`misalign.cli.rate`
(Demo-SafetyBench). Heavy modules are imported inside commands so ``--help`` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Mis-Align Bench: is a model misaligned when safety, values and culture must hold together?",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None, context_settings={"max_content_width": 120})
data_app = typer.Typer(help="Inspect, export and split datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

MapOpt = Annotated[list[str] | None, typer.Option("--map", help="Rename a column: FIELD=COLUMN (repeatable).")]
SkipOpt = Annotated[bool, typer.Option("--skip-bad", help="Write malformed rows to a rejects file and go on.")]
RejectsOpt = Annotated[Path | None, typer.Option(help="Where skipped rows go (default: <file>.rejects.jsonl).")]
LabelMapOpt = Annotated[list[str] | None, typer.Option("--label-map", help="Also read these label words: "
                        "LABEL=WORD[,WORD...] with LABEL aligned or misaligned (repeatable), e.g. "
                        "misaligned=1,unsafe. Default: only aligned/misaligned.")]
TaxOpt = Annotated[list[Path] | None, typer.Option("--taxonomy", help="Taxonomy TOML file or folder (repeatable).")]
BaseUrlOpt = Annotated[list[str] | None, typer.Option("--base-url", help="OpenAI-compatible server URL (repeatable: "
                       "requests spread over them), or MODEL=URL for one model's servers (MODEL as in --model, or "
                       "the name after openai/).")]
KeyEnvOpt = Annotated[str, typer.Option(help="Environment variable holding the API key ('none' for no key).")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="Requests in flight per model.")]
RpmOpt = Annotated[float | None, typer.Option(help="Requests-per-minute limit per model.")]
TimeoutOpt = Annotated[float, typer.Option(min=0.1, help="Seconds one request attempt may take.")]
RetriesOpt = Annotated[int, typer.Option(min=0, help="Retries of a failed request (429, 5xx, timeouts, broken "
                                         "answers) before it counts as failed.")]
ConnectWaitOpt = Annotated[float, typer.Option(min=0, help="Seconds to keep trying a server that refuses connections "
                                               "(a restart) before the request counts as failed.")]

EngineOpt = Annotated[str, typer.Option(help="Where the calls run: local (this process) or ray (Ray Data; the [ray] "
                                          "extra). Same results either way.")]
RayAddressOpt = Annotated[str | None, typer.Option(help="With --engine ray: join this Ray cluster (e.g. auto, "
                                                  "ray://head:10001); default: start a local one.")]
RayWorkersOpt = Annotated[int, typer.Option(min=1, help="With --engine ray: workers (actors) at once; each keeps "
                                            "--max-concurrency requests in flight.")]
RayShardsOpt = Annotated[int, typer.Option(min=1, help="With --engine ray: shards (fixed for a run: a re-run redoes "
                                           "only unfinished shards).")]
ShardStoreOpt = Annotated[str | None, typer.Option(help="With --engine ray: where shard outputs go, a folder or a "
                                                   "pyarrow.fs URI such as s3://bucket/run (default: <out>/shards).")]


def ray_settings(address: str | None, workers: int, shards: int, store: str | None = None, **vllm: int):
    """The :class:`~misalign.engines.raydata.RaySettings` of the shared Ray options."""
    from misalign.engines.raydata import RaySettings

    return RaySettings(address=address, workers=workers, shards=shards, store=store, **vllm)


def check_engine(engine: str) -> None:
    if engine not in ("local", "ray"):
        raise typer.BadParameter("--engine takes local or ray")


MaxFailedOpt = Annotated[float, typer.Option(min=0, max=1, help="Share of failed calls above which the run is an "
                                             "error (exit 2; its files are still written).")]
StreamOpt = Annotated[bool, typer.Option("--stream/--no-stream", help="Stream answers, so a server stops generating "
                                         "a request we gave up on (for slow local servers).")]


def max_tokens_option(default: str) -> Any:
    """``--max-tokens N``: the most tokens a chat model may generate per call; ``default`` says what holds without
    it."""
    return typer.Option("--max-tokens", min=1, help=f"Most tokens a chat model may generate per call (default: "
                        f"{default}).")


def endpoint_of(base_url: list[str] | None, api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 32,
                rpm: float | None = None, timeout: float = 120.0, max_retries: int = 5, connect_wait: float = 120.0,
                stream: bool = False):
    """The :class:`~misalign.models.Endpoint` the shared endpoint options describe (``--base-url`` items may be
    ``MODEL=URL``); a malformed item is a :class:`~misalign.errors.ConfigError`."""
    from misalign.models import Endpoint

    return Endpoint.with_urls(base_url, api_key_env=api_key_env, max_concurrency=max_concurrency, rpm=rpm,
                              timeout=timeout, max_retries=max_retries, connect_wait=connect_wait,
                              stream=stream)


def error(exc: object) -> None:
    """One clear line on stderr, never wrapped, with the message shown literally."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: failures users fix (bad data, set-up, a stopped run) and OS errors on files become one clear
    line and exit code 2; Ctrl-C says how to resume."""
    from misalign.errors import MisalignError

    try:
        command = typer.main.get_command(app)
        _name_metavars(command)
        command(prog_name="misalign")
    except MisalignError as exc:
        error(exc)
        sys.exit(2)
    except OSError as exc:  # unreadable, unwritable or full: name the file, not a traceback
        error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else exc)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == 130:  # Ctrl-C (typer turns KeyboardInterrupt into exit code 130)
            err_console.print("interrupted; re-run the same command to resume (finished calls are cached)")
        raise


def _name_metavars(command: Any) -> None:
    """Options show ``--model MODEL`` in help instead of a Python type such as ``<list[str]>``."""
    for param in getattr(command, "params", []):
        if getattr(param, "opts", None) and param.metavar is None and not getattr(param, "is_flag", False):
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        _name_metavars(sub)


def load_taxonomy(paths: list[Path] | None):
    from misalign.taxonomy import Taxonomy

    return Taxonomy.load(paths) if paths else Taxonomy.default()


def parse_mapping(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--map takes FIELD=COLUMN, got {item!r}")
        ours, theirs = item.split("=", 1)
        out[ours.strip()] = theirs.strip()
    return out


def load_data(source: str, taxonomy, mapping, skip_bad: bool, rejects: Path | None,
              label_map: list[str] | None = None):
    from misalign.io import describe_labels, load_dataset, parse_label_map

    try:
        labels = parse_label_map(label_map) if label_map else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if labels:
        err_console.print(f"labels: {describe_labels(labels)}", markup=False, highlight=False)
    ds = load_dataset(source, taxonomy=taxonomy, mapping=parse_mapping(mapping), skip_bad=skip_bad, rejects=rejects,
                      labels=labels)
    if ds.rejected:
        err_console.print(f"[yellow]{ds.rejected} malformed row(s) skipped, written to {ds.rejects_path}[/]")
    return ds



from misalign.cli import data, bench, build, rate, export  # noqa: E402, I001  (registers the commands, in help order)

__all__ = ["app", "bench", "build", "data", "export", "main", "rate"]
