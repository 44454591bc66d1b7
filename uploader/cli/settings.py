"""`uploader config`: the values a command would use, and where each comes from.

The command's options are parsed exactly as a real invocation parses them (click, with the profile as its
default_map), without running it; each value's source is click's ParameterSource, named for a person:
`flag`, `env NAME`, `FILE:PROFILE` or `default`. The API key's value is never shown, only set/unset, and a URL
that may carry one (the base URL, a proxy) is shown without its user info, query and fragment (`***`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from uploader.api import masked_url
from uploader.cli.app import command_keys, common
from uploader.cli.config import Profile, config_files, environment_source
from uploader.cli.preflight import duration_text

__all__ = ["SECRET_KEYS", "Resolved", "Setting", "resolved_settings"]

#: Settings whose value is never printed.
SECRET_KEYS = frozenset({"api_key"})
#: Settings whose value is a URL, shown masked (`masked_url`); a ledger only when it is a URL, not a file.
URL_KEYS = frozenset({"base_url", "ledger"})


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    source: str


@dataclass(frozen=True)
class Resolved:
    command: str
    profile: str | None
    files: list[tuple[str, bool]]  #: (path, exists), highest precedence first
    settings: list[Setting]

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "profile": self.profile,
            "files": [{"path": p, "exists": e} for p, e in self.files],
            "settings": {s.key: {"value": s.value, "source": s.source} for s in self.settings},
        }


def describe_source(source: ParameterSource | None, envvar: list[str], profile_source: str | None) -> str:
    """A value's source in a person's words."""
    if source is ParameterSource.COMMANDLINE:
        return "flag"
    if source is ParameterSource.ENVIRONMENT:
        return f"env {environment_source(envvar) or ' / '.join(envvar)}"
    if source is ParameterSource.DEFAULT_MAP:
        return profile_source or "profile"
    return "default"


def resolved_settings(ctx: click.Context, name: str, command: click.Command, args: list[str]) -> Resolved:
    """What `uploader NAME ARGS` would use (`ctx` is `uploader config`'s context; its own --profile applies)."""
    profile_name = common(ctx).get("profile")
    if profile_name and ctx.get_parameter_source("profile") is ParameterSource.COMMANDLINE and "--profile" not in args:
        args = ["--profile", profile_name, *args]
    try:  # as the command would parse them: what it refuses (a typo, a bad value) is refused here too
        sub = command.make_context(name, list(args), parent=ctx.parent)
    except click.MissingParameter:  # a required option not given yet: still show the rest
        sub = command.make_context(name, list(args), parent=ctx.parent, resilient_parsing=True)
    profile: Profile | None = common(sub).get("profile_read")
    keys = command_keys(command)
    settings = []
    for key, pname in keys.items():
        param = next(p for p in command.params if p.name == pname)
        value = sub.params[pname] if pname in sub.params else common(sub).get(_common_name(pname))
        if key in SECRET_KEYS:
            value = "set" if value else "unset"
        elif isinstance(value, dt.timedelta):
            value = duration_text(value)  # as it would be written: `24h`, not `1 day, 0:00:00`
        elif key in URL_KEYS and isinstance(value, str) and (key != "ledger" or "://" in value):
            value = masked_url(value)
        source = describe_source(
            sub.get_parameter_source(pname), _names(param.envvar), profile.source(name, key) if profile else None
        )
        settings.append(Setting(key, value, source))
    if "base_url" in keys:  # a command that talks to the API: the proxies its requests would go through
        settings += proxy_settings(os.environ)
        base_url = sub.params.get(keys["base_url"])
        if isinstance(base_url, str):
            _check_proxy(base_url)
    files = [(str(p), p.exists()) for p in config_files()]
    return Resolved(name, profile.name if profile else None, files, settings)


def proxy_settings(environ: Mapping[str, str]) -> list[Setting]:
    """https_proxy, http_proxy and no_proxy as the API's requests read them (uploader.api.wire), each from the
    variable it came from; a proxy URL's user info, query and fragment shown as `***`."""
    from uploader.api import proxies_from_env

    proxies = proxies_from_env(environ)
    found = []
    for scheme in ("https", "http", "no"):
        value = proxies.get(scheme)
        variable = next((n for n in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY") if environ.get(n)), None)
        if value is None or variable is None:
            found.append(Setting(f"{scheme}_proxy", None, "default"))
            continue
        if scheme != "no":
            value = masked_url(value)
        found.append(Setting(f"{scheme}_proxy", value, f"env {variable}"))
    return found


def _check_proxy(base_url: str) -> None:
    """Refuse, as the command would, a proxy its requests to `base_url` cannot go through (a socks5:// URL)."""
    from uploader.api import proxies_from_env, proxy_problem
    from uploader.errors import UsageError

    problem = proxy_problem(base_url, proxies_from_env(os.environ))
    if problem is not None:
        raise UsageError(f"{problem}; set the variable to an http:// proxy, or unset it")


def _common_name(pname: str) -> str:
    return {"as_json": "json"}.get(pname, pname)


def _names(envvar: str | Sequence[str] | None) -> list[str]:
    if envvar is None:
        return []
    return [envvar] if isinstance(envvar, str) else list(envvar)
