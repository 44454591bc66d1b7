"""The click classes of the `uploader` command: what every command shares.

- UploaderGroup lists the commands in workflow order, turns an UploaderError raised while options are read
  (a bad config file) into one line, and ends quietly when stdout's reader goes away (`export | head -1`).
- UploaderCommand gives every command the common options (--profile, --json, -q, -v, --log-file) unless it
  declares its own, sets each option's environment variables (uploader.cli.config.envvar_names), and makes
  the chosen profile the command's default_map (flag > environment > profile > default, as click applies it).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import click

from uploader.cli.config import EVERY_COMMAND, SHARED, ConfigFileError, envvar_names, read_profile, setting_key
from uploader.errors import UploaderError

__all__ = [
    "WORKFLOW",
    "ClosedOutput",
    "UploaderCommand",
    "UploaderGroup",
    "WatchedOutput",
    "command_keys",
    "common",
    "document_printed",
    "emit_error",
    "json_mode",
    "quiet_mode",
    "standard_streams",
]

#: The order `uploader --help` lists the commands in: the order they are used in.
WORKFLOW = (
    "load",
    "plan",
    "check",
    "run",
    "sync",
    "status",
    "report",
    "export",
    "retry",
    "reconcile",
    "adopt",
    "forget",
    "show",
    "config",
    "sandbox",
)
#: Exit status of a process whose output pipe was closed (128 + SIGPIPE), as a shell reports it.
EXIT_BROKEN_PIPE = 141

_META = "uploader."


def common(ctx: click.Context) -> dict[str, Any]:
    """The common options' values of this one context (not ctx.meta: that is shared by the whole chain,
    and `uploader config` parses another command's options inside its own context)."""
    store: dict[str, Any] = ctx.__dict__.setdefault("_uploader_common", {})
    return store


def json_mode(ctx: click.Context | None = None) -> bool:
    """Whether the current command was asked for JSON (--json)."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return False
    return bool(ctx.params.get("as_json") or common(ctx).get("json"))


def quiet_mode(ctx: click.Context | None = None) -> bool:
    """Whether the current command was asked for errors and its final line only (-q)."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return False
    return bool(ctx.params.get("quiet") or common(ctx).get("quiet"))


def emit_error(message: str, exit_code: int, as_json: bool, code: str | None = None) -> None:
    """An error as the user sees it: `error: …` on stderr; in JSON mode a JSON object on stderr, and the
    same object on stdout (unless the command already printed its document there, `document_printed`), so
    that a program reading stdout always gets one JSON document."""
    if not as_json:
        click.echo(f"error: {message}", err=True)
        return
    document: dict[str, Any] = {"error": message, "exit": exit_code}
    if code is not None:
        document["code"] = code
    text = json.dumps(document, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate (a manifest's `\ud800`): written as its JSON escape
            text = json.dumps(document)
    click.echo(text, err=True)
    ctx = click.get_current_context(silent=True)
    if ctx is None or not common(ctx).get("document_printed"):
        click.echo(text)


#: Where the run keeps its StopFlag, to know which signal stopped it.
STOP = "uploader.stop"
#: The SIGTERM that the command line's handler (uploader.cli.commands) turned into a KeyboardInterrupt (0: none).
TERMINATED = [0]


def hold_signals() -> None:
    """A command stopped by a signal ignores any further one while it closes its ledger and exits: a second
    Ctrl-C would otherwise break into that clean-up at any line (KeyboardInterrupt) and end it with exit 1."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: nothing to hold
            signal.signal(sig, signal.SIG_IGN)


def interrupted(as_json: bool | None = None) -> NoReturn:
    """Exit as a stopped command does: 130 after SIGINT (Ctrl-C), 143 after SIGTERM (128 + the signal); in
    JSON if the command was asked for it (`as_json`, when its own context is gone)."""
    ctx = click.get_current_context(silent=True)
    stop = ctx.meta.get(STOP) if ctx is not None else None
    signum = getattr(stop, "signum", None) or TERMINATED[0]
    hold_signals()
    message = "interrupted; run the same command again to resume."
    if json_mode() if as_json is None else as_json:
        emit_error(message, 128 + (signum or 2), True, "interrupted")
    else:
        click.echo(message, err=True)
    sys.exit(128 + (signum or 2))


def document_printed(ctx: click.Context | None = None) -> None:
    """Note that the current command printed its JSON document on stdout (an error then goes to stderr only)."""
    ctx = ctx or click.get_current_context()
    common(ctx)["document_printed"] = True


def command_keys(command: click.Command) -> dict[str, str]:
    """A command's options as setting key → parameter name (the keys of config files and UPLOADER_ names)."""
    return {
        setting_key(p.opts): p.name
        for p in command.params
        if isinstance(p, click.Option) and p.name and not p.hidden and p.name not in ("help", "version")
    }


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        common(ctx)[name] = value
        return value

    return callback


def _apply_profile(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--profile (eager: before the other options are read): the profile's settings become default_map."""
    group = ctx.parent.command if ctx.parent is not None else None
    commands = getattr(group, "commands", None) or {ctx.info_name or "": ctx.command}
    keys = {name: command_keys(cmd) for name, cmd in commands.items()}
    profile = read_profile(value, keys)
    common(ctx).update(profile=value, profile_read=profile)
    ctx.meta[_META + "profile"] = profile  # for an error in reading the other options (`_json_wanted`)
    name, own = ctx.command.name or "", command_keys(ctx.command)
    if name == "sandbox":  # its own table and the options every command takes; no shared setting is the emulator's
        own = {key: pname for key, pname in own.items() if key not in SHARED or key in EVERY_COMMAND}
    defaults = profile.defaults_for(name, own)
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    for key, pname in own.items():
        if pname in defaults and pname in options:
            problem = profile_value_problem(ctx, options[pname], defaults[pname])
            if problem is not None:
                raise ConfigFileError(f"{profile.source(name, key)}: {key}: {problem}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def profile_value_problem(ctx: click.Context, option: click.Option, value: Any) -> str | None:
    """Why a profile's value cannot be this option's (None: it can). TOML's kinds must be the option's own, as
    the flag would take it: a switch true or false, a count or an integer option an integer, a number option a
    number, a repeatable option a list of text, any other text (a number too, as a flag's text would be); then
    the option's own checks (ranges, choices, durations). click would coerce the rest (3.7 → 3, a list → its
    repr)."""
    if option.is_flag and not option.count:
        ok, want = type(value) is bool, "true or false"
    elif option.multiple:
        ok, want = type(value) is list and all(type(v) is str for v in value), "a list of text"
    elif option.count or isinstance(option.type, click.types.IntParamType):
        ok, want = type(value) is int, "an integer"
    elif isinstance(option.type, click.types.FloatParamType):
        ok, want = type(value) in (int, float), "a number"
    else:
        ok, want = type(value) in (str, int, float), "text"
    if not ok:
        return f"must be {want}, not {json.dumps(value, default=str)}"
    try:
        option.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        return exc.message
    return None


#: The options every command has (unless it declares its own under the same name).
COMMON_OPTIONS: Sequence[tuple[str, Callable[[], click.Option]]] = (
    (
        "profile",
        lambda: click.Option(
            ["--profile"],
            metavar="NAME",
            is_eager=True,
            expose_value=False,
            callback=_apply_profile,
            help="Read settings from this profile of the config files (./uploader.toml, then the user's "
            "config.toml); default: the profile `default`, if any.",
        ),
    ),
    (
        "as_json",
        lambda: click.Option(
            ["--json", "as_json"],
            is_flag=True,
            expose_value=False,
            callback=_store("json"),
            help="Print one JSON document on stdout (errors: a JSON object on stderr too).",
        ),
    ),
    (
        "quiet",
        lambda: click.Option(
            ["--quiet", "-q"],
            is_flag=True,
            expose_value=False,
            callback=_store("quiet"),
            help="Print only errors and the final line.",
        ),
    ),
    (
        "verbose",
        lambda: click.Option(
            ["--verbose", "-v"],
            count=True,
            expose_value=False,
            callback=_store("verbose"),
            help="Log to stderr: -v each API answer that is not a success, -vv every request.",
        ),
    ),
    (
        "log_file",
        lambda: click.Option(
            ["--log-file"],
            metavar="PATH",
            expose_value=False,
            callback=_store("log_file"),
            help="Append a JSON line per API request (time, reference_id, attempt, HTTP status, code, latency).",
        ),
    ),
)


class UploaderCommand(click.Command):
    """A command with the common options, an environment variable for every option, and profiles."""

    def __init__(self, name: str | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        have = {p.name for p in self.params}
        for pname, make in COMMON_OPTIONS:
            if pname not in have:
                self.params.append(make())
        for p in self.params:
            if isinstance(p, click.Option) and p.name not in ("help", "version"):
                p.envvar = envvar_names(name or "", setting_key(p.opts))
                p.show_envvar = bool(p.envvar)

    def invoke(self, ctx: click.Context) -> Any:
        from uploader.cli.logs import configure_logging

        level = ctx.params.get("verbose") or common(ctx).get("verbose") or 0
        log_file = ctx.params.get("log_file") or common(ctx).get("log_file")
        if log_file:
            log_file = os.path.expanduser(str(log_file))  # a profile's `~/…`, as the shell does for a flag's
            _check_log_file(ctx, log_file)
        ctx.call_on_close(configure_logging(int(level), log_file))
        return super().invoke(ctx)


def _check_log_file(ctx: click.Context, log_file: str) -> None:
    """Refuse a --log-file that is the command's ledger (or one of its SQLite companions) or its manifest:
    appended log lines would destroy the one and change the other."""
    from uploader.ledger import overwrites_ledger

    problem = overwrites_ledger(log_file, ctx.params["ledger"], "--log-file") if "ledger" in ctx.params else None
    manifest = ctx.params.get("manifest")
    if problem is None and manifest is not None and str(manifest) != "-" and os.path.exists(manifest):
        if os.path.exists(log_file) and os.path.samefile(log_file, manifest):
            problem = f"--log-file {log_file} is the manifest: log lines would be appended to it; name another file"
    if problem is None and "ledger" in ctx.params and os.path.exists(log_file):
        problem = _loaded_manifest(log_file, ctx.params["ledger"])
    if problem is not None:
        raise UploaderError(problem)


def _loaded_manifest(log_file: str, ledger: str | None) -> str | None:
    """Why an existing --log-file may not be appended to: it is a manifest the ledger loaded (a resume names
    no manifest, but `show` and the next load read that file). None when it is not, or there is no ledger."""
    from uploader.ledger import Ledger, manifest_paths

    try:
        led = Ledger.open(ledger, create=False, upgrade=False)
    except UploaderError:
        return None
    try:
        paths = manifest_paths(led.engine)
    except UploaderError:
        return None
    finally:
        led.close()
    for path in paths:
        if os.path.exists(path) and os.path.samefile(path, log_file):
            return (
                f"--log-file {log_file} is a manifest the ledger loaded: log lines would be appended to it; "
                "name another file"
            )
    return None


class UploaderGroup(click.Group):
    """The `uploader` group: commands in workflow order, errors while reading options as one line."""

    command_class = UploaderCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in WORKFLOW if name in self.commands]
        return known + sorted(name for name in self.commands if name not in WORKFLOW)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                if not _stdout_failed():
                    raise
                emit_error(f"cannot write to standard output: {exc.strerror or exc}", 1, False)
            _quiet_stdout()
            sys.exit(EXIT_BROKEN_PIPE if exc.errno == errno.EPIPE else 1)
        except UploaderError as exc:  # raised while a command's options were read (a config file)
            emit_error(str(exc), exc.exit_code, _json_wanted(ctx), getattr(exc, "code", None))
            sys.exit(exc.exit_code)
        except click.ClickException as exc:  # a usage error found by click: in JSON mode, as JSON too
            if not _json_wanted(ctx):
                raise
            emit_error(exc.format_message(), exc.exit_code, True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:  # a signal after the command's own handling ended (its clean-up, its return):
            interrupted(_json_wanted(ctx))  # stopped all the same, not click's "Aborted!" and exit 1

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_META + "args"] = list(args)  # to know if JSON was asked for when parsing them fails
        return super().parse_args(ctx, args)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:  # a signal while click reads the command line: stopped, not "Aborted!"
            interrupted(json_asked(args))


def _json_wanted(ctx: click.Context) -> bool:
    """Whether an error found while the options were read is told in JSON: --json, else UPLOADER_JSON when set,
    else the profile's `json` (once read), as the option itself takes them."""
    if json_asked(ctx.meta.get(_META + "args", ())):
        return True
    if "UPLOADER_JSON" in os.environ:
        return False  # set, and not to a true value: it beats the profile
    scopes = getattr(ctx.meta.get(_META + "profile"), "settings", {})
    for scope in (ctx.invoked_subcommand or "", ""):
        if "json" in scopes.get(scope, {}):
            return scopes[scope]["json"][0] is True
    return False


def json_asked(args: Sequence[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether a command line (not parsed yet, or not parsable) asks for JSON."""
    environ = os.environ if environ is None else environ
    return "--json" in args or environ.get("UPLOADER_JSON", "").lower() in ("1", "true", "yes", "on")


class ClosedOutput(io.TextIOBase):
    """sys.stdout of a process started without one (`>&-`; Python sets it to None): writing fails as writing
    to a closed descriptor does (EBADF), so a command that prints says so in one line, and one that prints
    nothing there (`report -o FILE`) is not troubled."""

    failed = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.failed = True
        raise OSError(errno.EBADF, "standard output is closed")


class WatchedOutput(io.TextIOWrapper):
    """sys.stdout of the program: a write or flush that fails (a full disk behind `>`) is remembered, so that
    the OSError it raises is told as standard output's, in one line, and not as a traceback."""

    failed = False

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError:
            self.failed = True
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.failed = True
            raise


def standard_streams() -> None:
    """Standard output watched (WatchedOutput); and for the standard streams the process started without:
    stdout a ClosedOutput, stderr /dev/null (nowhere to complain), and their descriptors (stdin's too) held by
    /dev/null, so that no file this process opens becomes descriptor 1 or 2 and takes what is written there."""
    out = sys.stdout
    if type(out) is io.TextIOWrapper:
        sys.stdout = WatchedOutput(
            out.detach(), encoding=out.encoding, errors=out.errors, line_buffering=out.line_buffering
        )
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = ClosedOutput()
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the process's own stderr, for its whole life


def _stdout_failed() -> bool:
    """Whether standard output is what failed (a full disk behind `>`, a closed descriptor)."""
    return bool(getattr(sys.stdout, "failed", False))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
