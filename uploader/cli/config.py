"""Settings from outside the command line: config files with profiles, environment variables, the API key file.

Precedence, highest first: the command line, the environment, the profile, the option's default. click
applies it: each option's `envvar` is set here (`envvar_names`), and a profile becomes the command's
`default_map` (`Profile.defaults_for`), which click reads only when neither of the others gave a value.

Files (both optional; a key in the first wins over the same key in the second, whether either sets it at the
profile's level or in a command's table; within one file the command's table wins): `./uploader.toml`, then the
user's `config.toml` in platformdirs' config folder (`$XDG_CONFIG_HOME/uploader/config.toml` on Linux). Each
top-level table is a profile; `--profile NAME` / UPLOADER_PROFILE picks one, else `default` if there is one:

    [default]
    ledger = "jobs.db"            # options every command shares: ledger, base_url, api_key_file, project_id …
    [default.run]
    concurrency = 16              # an option of one command, in that command's table

The API key itself is never read from a file of settings (such files get committed): `api_key_file` names a
file that holds only the key. tomllib and platformdirs are imported here only, and only when needed (a
command without config files does not load the TOML parser).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uploader.errors import UploaderError, UsageError

__all__ = [
    "API_KEY_ENV",
    "PROFILE_ENV",
    "SHARED",
    "TYPED_ONLY",
    "ConfigFileError",
    "Profile",
    "config_files",
    "envvar_names",
    "read_api_key_file",
    "read_profile",
    "setting_key",
]

#: The prefix of every option's environment variable.
ENV_PREFIX = "UPLOADER_"
#: The environment variable that picks a profile (like --profile).
PROFILE_ENV = "UPLOADER_PROFILE"
#: The profile used when none is asked for (only if a file has it).
DEFAULT_PROFILE = "default"
#: The project's config file, looked for in the current folder.
PROJECT_FILE = "uploader.toml"
#: Older names that keep working, read after the UPLOADER_ one (setting key → names).
LEGACY_ENV: Mapping[str, tuple[str, ...]] = {
    "api_key": ("PLAYMENT_API_KEY",),
    "api_key_file": ("PLAYMENT_API_KEY_FILE",),
    "base_url": ("PLAYMENT_BASE_URL",),
}
API_KEY_ENV = ("UPLOADER_API_KEY", "PLAYMENT_API_KEY")

#: Options that mean the same in every command that has them: UPLOADER_<KEY>, and a profile's top level.
#: Any other option is one command's: UPLOADER_<COMMAND>_<KEY>, and the profile's [<profile>.<command>] table.
SHARED = frozenset(
    {
        "ledger",
        "api_key",
        "api_key_file",
        "base_url",
        "allow_http",
        "sandbox",
        "timeout",
        "max_retry_after",
        "project_id",
        "work_flow_id",
        "batch_id",
        "column",
        "profile",
        "json",
        "quiet",
        "verbose",
        "log_file",
        "check_concurrency",
        "per_host_rate",
        "check_timeout",
        "recheck_after",
        "min_url_validity",  # check, run, load and plan
    }
)

#: The options every command takes (the sandbox too, which shares no other: its --api-key is the key it accepts).
EVERY_COMMAND = frozenset({"profile", "json", "quiet", "verbose", "log_file"})

#: Options only ever typed: what a command that removes or resets rows acts on is never inherited from the
#: environment or a profile (command → setting keys).
TYPED_ONLY: Mapping[str, frozenset[str]] = {
    "forget": frozenset({"project_id", "status", "reference_id_file", "manifest", "include_created", "yes"}),
    "retry": frozenset({"error_code", "all", "blocked"}),
}

#: Never read from a config file (its value would sit in a file that gets shared); `profile` picks the file's table.
NOT_IN_FILES = frozenset({"api_key", "profile"})


class ConfigFileError(UploaderError):
    """A config file cannot be used."""


def setting_key(opts: Iterable[str]) -> str:
    """The key of an option in files and environment names: its longest flag, without dashes
    (`--max-attempts` → max_attempts)."""
    longest = max(opts, key=len)
    return longest.lstrip("-").replace("-", "_")


def envvar_names(command: str, key: str) -> list[str]:
    """The environment variables an option reads, first found wins; none for a TYPED_ONLY option."""
    if key in TYPED_ONLY.get(command, ()):
        return []
    if key in SHARED and (command != "sandbox" or key in EVERY_COMMAND):  # the emulator's --api-key: its own
        return [ENV_PREFIX + key.upper(), *LEGACY_ENV.get(key, ())]
    return [f"{ENV_PREFIX}{command.upper()}_{key.upper()}"]


def config_files() -> list[Path]:
    """The files looked for, highest precedence first."""
    import platformdirs

    user = Path(platformdirs.user_config_dir("uploader", appauthor=False)) / "config.toml"
    return [Path(PROJECT_FILE), user]


#: A profile's settings: scope (a command, or "" for the profile's level) → key → (value, "FILE:PROFILE[.COMMAND]").
Scopes = dict[str, dict[str, tuple[Any, str]]]


@dataclass(frozen=True)
class Profile:
    """One profile's settings, the files laid over each other (`_laid_over`): the first file that sets a key,
    at the profile's level or in the command's table, gives it; within that file the command's table wins."""

    name: str | None
    settings: Scopes = field(default_factory=dict)
    files: tuple[Path, ...] = ()

    def defaults_for(self, command: str, keys: Mapping[str, str]) -> dict[str, Any]:
        """click's default_map for `command`, whose options are `keys` (setting key → parameter name)."""
        out: dict[str, Any] = {}
        for scope in ("", command):
            for key, (value, _source) in self.settings.get(scope, {}).items():
                if key in keys and key not in TYPED_ONLY.get(command, ()):
                    out[keys[key]] = value
        return out

    def source(self, command: str, key: str) -> str | None:
        """Where `command`'s setting `key` comes from (file:profile), None if the profile has no such key."""
        for scope in (command, ""):
            if key in self.settings.get(scope, {}):
                return self.settings[scope][key][1]
        return None


def read_profile(
    name: str | None, commands: Mapping[str, Mapping[str, str]], files: list[Path] | None = None
) -> Profile:
    """Profile `name` (None: `default`, if any file has it) from the config files. `commands` maps each
    command to its options (setting key → parameter name), to check every key. ConfigFileError for a file
    that is not TOML (file:line:column) or holds an unknown key; UsageError for a profile asked for by name
    that no file has."""
    files = config_files() if files is None else files
    wanted = name or DEFAULT_PROFILE
    found: list[Path] = []
    names: set[str] = set()
    settings: Scopes = {}
    for path in reversed(files):  # lowest precedence first: each file is laid over the ones below it
        data = _parse(path)
        if data is None:
            continue
        found.append(path)
        for profile, table in data.items():
            if not isinstance(table, dict):
                raise ConfigFileError(
                    f"{path}: {profile!r} is not a profile: the file holds tables, e.g. "
                    f"[{DEFAULT_PROFILE}] then {profile} = …"
                )
            names.add(profile)
            checked = _check_profile(path, profile, table, commands)
            if profile == wanted:
                settings = _laid_over(settings, checked)
    if name is not None and name not in names:
        where = ", ".join(str(p) for p in files)
        known = f" (profiles: {', '.join(sorted(names))})" if names else ""
        raise UsageError(f"no profile {name!r} in {where}{known}")
    return Profile(wanted if wanted in names else None, settings, tuple(reversed(found)))


def _laid_over(lower: Scopes, upper: Scopes) -> Scopes:
    """The settings of a file (`upper`) laid over those of the files it outranks (`lower`). The file ranks
    before the scope: a key `upper` sets at the profile's level also hides that key in `lower`'s command
    tables (`Profile.defaults_for` lets a command's table win only over its own file's profile level)."""
    shared = upper.get("", {})
    out = {scope: {k: v for k, v in values.items() if k not in shared} for scope, values in lower.items()}
    for scope, values in upper.items():
        out.setdefault(scope, {}).update(values)
    return out


def _parse(path: Path) -> dict[str, Any] | None:
    """The TOML document at `path`; None if there is no such file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():  # meant to be read: saying nothing would run with other settings
            raise ConfigFileError(f"{path}: a link to {os.readlink(path)}, which does not exist") from None
        return None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    import tomllib

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        column = len(raw[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigFileError(
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{raw[exc.start]:02X}: {exc.reason}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}:{_toml_location(str(exc), text)}") from None


def _toml_location(message: str, text: str) -> str:
    """`line:column: message` of a TOML error in document `text` (Python 3.11 keeps the place in the message
    only); an error "at end of document" is placed just after the last character."""
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        return f"{match.group(1)}:{match.group(2)}: {message[: match.start()]}"
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        line, column = text.count("\n") + 1, len(text.rpartition("\n")[2]) + 1
        return f"{line}:{column}: {message[: match.start()]}"
    return f" {message}"


def _check_profile(
    path: Path, profile: str, table: dict[str, Any], commands: Mapping[str, Mapping[str, str]]
) -> Scopes:
    """One profile's table as scope → key → (value, source); ConfigFileError for a key no option has."""
    source = f"{path}:{profile}"
    shared = {k for keys in commands.values() for k in keys if k in SHARED}
    out: Scopes = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if isinstance(value, dict) and raw_key in commands:
            scope = out.setdefault(raw_key, {})
            for raw_sub, sub_value in value.items():
                sub = raw_sub.replace("-", "_")
                _check_key(path, f"{profile}.{raw_key}", sub, set(commands[raw_key]) - TYPED_ONLY.get(raw_key, set()))
                scope[sub] = (sub_value, f"{source}.{raw_key}")
            continue
        if isinstance(value, dict):
            raise ConfigFileError(
                f"{path}: [{profile}.{raw_key}] is no command's table; commands: {', '.join(sorted(commands))}"
            )
        if key not in shared:
            owners = sorted(c for c, keys in commands.items() if key in keys)
            if owners:
                raise ConfigFileError(
                    f"{path}: [{profile}] {raw_key} is an option of `{owners[0]}` only: put it "
                    f"in a table [{profile}.{owners[0]}]"
                )
        _check_key(path, profile, key, shared)
        out.setdefault("", {})[key] = (value, source)
    return out


def _check_key(path: Path, table: str, key: str, known: set[str]) -> None:
    if key == "api_key":
        raise ConfigFileError(
            f"{path}: [{table}] api_key: the key is not read from a config file (such files "
            'get shared); put it in a file of its own and set api_key_file = "PATH"'
        )
    if key in NOT_IN_FILES or key not in known:
        raise ConfigFileError(f"{path}: [{table}] unknown setting {key!r}; known here: {', '.join(sorted(known))}")


def read_api_key_file(path: str) -> str:
    """The API key in file `path`, without one trailing newline; UploaderError if it cannot be read or is empty."""
    full = Path(path).expanduser()
    try:
        text = full.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UploaderError(f"cannot read the API key file {path}: {reason}") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise UploaderError(f"the API key file {path} is empty")
    return text


def pick_api_key(key: str | None, key_rank: int, file: str | None, file_rank: int) -> str | None:
    """The key to use from --api-key and --api-key-file, each with the rank of its source (0 command line,
    1 environment, 2 profile): the better-ranked one wins; both from the same rank is a UsageError."""
    if key and file:
        if key_rank == file_rank:
            raise UsageError("both an API key and an API key file are given (the same way): keep one")
        if file_rank < key_rank:
            return read_api_key_file(file)
        return key
    if file:
        return read_api_key_file(file)
    return key or None


def environment_source(names: Iterable[str], environ: Mapping[str, str] | None = None) -> str | None:
    """The first of `names` set in the environment (as click reads them), or None."""
    environ = os.environ if environ is None else environ
    for name in names:
        if environ.get(name):
            return name
    return None
