"""Is the README true? A demanding new user follows /work/main/README.md literally.

Every claim a user can check is a test here: the install-and-run commands (in a fresh folder, against the
sandbox), the command table (parsed from the README: every command and the flags and values it shows), the exit
codes, configuration sources and their precedence, `--json` and `-q`, the export's columns and files, the sample
manifests, the job states and the documented moves between them, the promises about resuming after a stop or a
kill and about several runs sharing one PostgreSQL ledger, the sandbox command, and the library examples. The
reverse too: what `--help` offers that the README does not name.

Real components only: `python -m uploader` (or the installed `uploader` script) as real processes, the sandbox
over real loopback HTTP (the `uploader sandbox` command or `uploader.Sandbox` in this process, whose jobs and
stats a test reads back), real SQLite files in tmp_path. Where the README and the product disagree the test is
kept and marked `xfail(strict=True, reason="FINDING: …")`; its docstring says what each one says.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SAMPLES = ROOT / "sample_manifests"
LOAD = ["--project-id", "demo", "--work-flow-id", "wf-1"]
#: The columns the README's export row lists, in its order (prose name → column).
EXPORT_COLUMNS = [
    "reference_id",
    "job_id",
    "status",
    "origin",
    "error_code",
    "error_message",
    "attempts",
    "project_id",
    "work_flow_id",
    "batch_id",
    "platform_status",
    "platform_status_at",
    "result_path",
    "result",
    "result_error",
]


# --- helpers ---------------------------------------------------------------------------------------------------


def section(title: str) -> str:
    """The README's text under `## title`, up to the next `## ` heading."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def command_table() -> list[tuple[str, str, str]]:
    """(command, usage after the name, description) of every row of the README's command table."""
    rows = []
    for line in section("Commands").splitlines():
        match = re.match(r"\| `uploader (\w+)([^`]*)` \|(.*)\|\s*$", line)
        if match:
            rows.append((match.group(1), match.group(2), match.group(3)))
    assert len(rows) >= 10, "the README's command table was not found"
    return rows


def state_table() -> list[str]:
    """The states of the README's job-state table (section "The ledger")."""
    states = re.findall(r"^\| `(\w+)` \|", section("The ledger"), flags=re.M)
    assert len(states) >= 6
    return states


def process_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no UPLOADER_/PLAYMENT_ variable, an empty user config folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if home is not None:
        env["XDG_CONFIG_HOME"] = str(home / "xdg")
    return {**env, **extra}


def up(
    *args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m uploader ARGS` as a real process in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args],
        cwd=cwd,
        env=env if env is not None else process_env(cwd),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "uploader", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def write_images(path: Path, n: int, prefix: str = "img") -> Path:
    path.write_text("reference_id,image_url\n" + "".join(f"{prefix}-{i:04d},https://e.com/{i}.jpg\n" for i in range(n)))
    return path


def settings(cwd: Path, command: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """`uploader config COMMAND ARGS --json`: setting → {"value", "source"}."""
    done = up("config", command, *args, "--json", cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["settings"]


def help_text(command: str | None, cwd: Path) -> str:
    done = up(*([command] if command else []), "--help", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def help_envvars(text: str) -> dict[str, list[str]]:
    """Each option of a --help page (its first long flag) → the environment variables it names."""
    out: dict[str, list[str]] = {}
    options = text.split("Options:", 1)[1]
    for chunk in re.split(r"\n  (?=-)", "\n" + options):
        flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?![\w-])", chunk.split("  ", 1)[0])
        found = re.search(r"\[env var: ([^;\]]+)", " ".join(chunk.split()))
        if flags and found:
            out[flags[0]] = [v.strip() for v in found.group(1).split(",")]
    return out


def export_rows(cwd: Path, *args: str) -> list[dict]:
    done = up("export", "--format", "jsonl", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder (the current one, too) with an empty user config folder beside it."""
    for name in list(os.environ):
        if name.startswith(("UPLOADER_", "PLAYMENT_")):
            monkeypatch.delenv(name)
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder / "xdg"))
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def box():
    from uploader.sandbox import Sandbox

    with Sandbox() as sandbox:
        yield sandbox


def api_env(work: Path, box) -> dict[str, str]:
    return process_env(work, PLAYMENT_API_KEY=box.api_key, PLAYMENT_BASE_URL=box.base_url)


# --- Install and run ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_install_and_run_in_a_fresh_folder_then_the_rerun_sends_nothing(work: Path):
    """README "Install and run": the two commands, as typed, with the installed `uploader` script, in a fresh
    folder holding sample_manifests/: exit 0, `./uploader.db` created 0600, `jobs.csv` written (0600) with every
    row `succeeded` and a job_id; "a rerun skips what already succeeded": the same run again sends nothing."""
    script = Path(sys.executable).parent / "uploader"
    if not script.exists():
        pytest.skip("no installed `uploader` script beside this interpreter")
    shutil.copytree(SAMPLES, work / "sample_manifests")
    env = process_env(work)
    first = subprocess.run(
        [str(script), "run", "sample_manifests/images.csv", "--project-id", "demo", "--work-flow-id", "wf-1",
         "--sandbox"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert "uploader export -o jobs.csv" in first.stdout  # the follow-up the README types next
    exported = subprocess.run([str(script), "export", "-o", "jobs.csv"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE((work / "uploader.db").stat().st_mode) == 0o600  # "Default file ./uploader.db (created 0600)"
    assert stat.S_IMODE((work / "jobs.csv").stat().st_mode) == 0o600  # "new files 0600"
    rows = list(csv.DictReader((work / "jobs.csv").open()))
    assert len(rows) == 12
    assert all(r["status"] == "succeeded" and r["job_id"] and r["origin"] == "created" for r in rows)
    assert {r["camera"] for r in rows} >= {"rear", "left"}  # the manifest's extra column comes back
    again = subprocess.run(
        [str(script), "run", "sample_manifests/images.csv", "--project-id", "demo", "--work-flow-id", "wf-1",
         "--sandbox", "--json"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["this_run"]["requests"] == 0 and doc["counts"]["succeeded"] == 12


def test_python_dash_m_uploader_and_the_help_list_the_commands_of_the_readme_table(work: Path):
    """README "Commands": the table's commands are exactly those `uploader --help` lists."""
    text = help_text(None, work)
    listed = re.findall(r"^  (\w+)\s{2,}", text.split("Commands:", 1)[1], flags=re.M)
    assert sorted(listed) == sorted(name for name, _, _ in command_table())


# --- the command table, flag by flag ------------------------------------------------------------------------------


def _table_values() -> list[tuple[str, str, str]]:
    """(command, flag, value) for every `[--flag VALUE]` of the table whose VALUE is a literal (64, 24h, 64Mi,
    report.html), not a placeholder (R, N, S, …)."""
    out = []
    for name, usage, _ in command_table():
        for flag, value in re.findall(r"\[(--?[a-z][a-z0-9-]*) ([^\]\s]+)\]", usage):
            if re.fullmatch(r"\d[\w.]*|[\w-]+\.[a-z]+", value):
                out.append((name, flag, value))
    return out


def _table_value_params():
    params = []
    for name, flag, value in _table_values():
        # Fixed: `sync --max-result-bytes` takes sizes (64Mi, 1G) as the table writes them (uploader/cli/units.py).
        params.append(pytest.param(name, flag, value, id=f"{name}{flag}={value}"))
    return params


def _param_key(command: str, flag: str) -> str:
    from uploader.cli.commands import cli

    for param in cli.commands[command].params:
        if flag in getattr(param, "opts", ()):
            return param.name
    raise AssertionError(f"{command} has no {flag}")


@pytest.mark.parametrize(("command", "flag", "value"), _table_value_params())
def test_every_value_the_command_table_shows_is_accepted_and_is_the_default(
    work: Path, command: str, flag: str, value: str
):
    """README "Commands": the usage column shows each flag with its value, e.g. `[--concurrency 64]`,
    `[--max-result-bytes 64Mi]`, `[--port 8080]`, `[-o report.html]`. A user copies the value: the flag must take
    it as written (`uploader config COMMAND FLAG VALUE`, which "refuses what the command would refuse"), and,
    the table writing defaults that way, it must be the default."""
    # `check --recheck-after 7d` is an example, not a default (README "Checking attachments": "`--recheck-after 7d`
    # to look again at old verdicts"; --help: "by default a verdict is kept"): only its acceptance is checked.
    key = _param_key(command, flag)
    given = up("config", command, flag, value, "--json", cwd=work)
    assert given.returncode == 0, given.stderr
    shown = json.loads(given.stdout)["settings"][key]
    assert shown["source"] == "flag"
    if (command, flag) != ("check", "--recheck-after"):
        default = settings(work, command)[key]
        assert default["source"] == "default" and default["value"] == shown["value"], (default, shown)


def test_sync_watch_without_seconds_repeats_every_30_seconds(work: Path):
    """README sync: "`--watch`: again every SECONDS (30)"."""
    assert settings(work, "sync", "--watch")["watch"]["value"] == 30


def test_the_options_every_command_takes_are_in_every_help(work: Path):
    """README: "Every command also takes `--profile NAME`, `--json`, `-q`, `-v`/`-vv` and `--log-file PATH`"."""
    for name, _, _ in command_table():
        text = help_text(name, work)
        for flag in ("--profile", "--json", "--log-file"):
            assert re.search(rf"(^|\s){flag}\b", text), (name, flag)
        assert re.search(r"(^|\s)-q, --quiet\b", text) and re.search(r"(^|\s)-v, --verbose\b", text), name


def test_every_flag_of_every_help_is_named_in_the_readme(work: Path):
    """Fixed (the README names `--host` and `--check-attachments`).
    The reverse of the command table: each long flag `uploader COMMAND --help` offers is named somewhere in the
    README (the long forms of `-o`, `-q`, `-v` count as named through them). Found: `sandbox --host` (the README
    says only "loopback by default", so a user cannot learn how to serve another interface) and
    `sandbox --check-attachments` (the README writes "with `check_attachments`", the SandboxConfig field, which
    is no flag a user can type)."""
    short_named = {"--output": "-o", "--quiet": "-q", "--verbose": "-v"}
    missing = []
    for name, _, _ in command_table():
        for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?![\w-])", help_text(name, work))):
            if flag == "--help" or re.search(rf"`[^`]*{re.escape(flag)}(?![\w-])", README):
                continue
            if flag in short_named and f"`{short_named[flag]}" in README:
                continue
            missing.append(f"{name} {flag}")
    assert missing == []


# --- configuration ------------------------------------------------------------------------------------------------


def test_the_environment_variables_the_readme_names_are_the_ones_run_reads(work: Path):
    """README "Configuration": `UPLOADER_LEDGER`, `UPLOADER_BASE_URL`, `UPLOADER_API_KEY_FILE`, `UPLOADER_PROJECT_ID`,
    `UPLOADER_RUN_CONCURRENCY`; "`PLAYMENT_API_KEY`, `PLAYMENT_BASE_URL` and `PLAYMENT_API_KEY_FILE` keep working";
    `UPLOADER_RUN_SIGN=1`; "each option's variable is shown in the command's `--help`"."""
    named = help_envvars(help_text("run", work))
    assert "UPLOADER_LEDGER" in named["--ledger"]
    assert named["--base-url"] == ["UPLOADER_BASE_URL", "PLAYMENT_BASE_URL"]
    assert named["--api-key-file"] == ["UPLOADER_API_KEY_FILE", "PLAYMENT_API_KEY_FILE"]
    assert "PLAYMENT_API_KEY" in named["--api-key"]
    assert named["--project-id"] == ["UPLOADER_PROJECT_ID"]
    assert named["--concurrency"] == ["UPLOADER_RUN_CONCURRENCY"]
    assert named["--sign"] == ["UPLOADER_RUN_SIGN"]
    env = process_env(
        work, UPLOADER_RUN_CONCURRENCY="7", PLAYMENT_BASE_URL="https://b.example.com", UPLOADER_RUN_SIGN="1"
    )
    got = settings(work, "run", env=env)
    assert got["concurrency"] == {"value": 7, "source": "env UPLOADER_RUN_CONCURRENCY"}
    assert got["base_url"] == {"value": "https://b.example.com", "source": "env PLAYMENT_BASE_URL"}
    assert got["sign"]["value"] is True


def test_options_every_command_shares_read_uploader_option_in_every_command(work: Path):
    """Fixed (cli/config.py EVERY_COMMAND: the sandbox reads the shared names of the options every command takes).
    README "Configuration": "Options every command shares are `UPLOADER_<OPTION>` … the others are
    `UPLOADER_<COMMAND>_<OPTION>`" and "`--profile NAME` or `UPLOADER_PROFILE` picks one". `--profile`, `--json`,
    `-q`, `-v` and `--log-file` are what "every command also takes". `uploader sandbox --help` names
    UPLOADER_SANDBOX_PROFILE, UPLOADER_SANDBOX_JSON, … instead: a user with UPLOADER_JSON=1 or UPLOADER_PROFILE set
    in the shell gets them everywhere but the sandbox, silently."""
    wrong = []
    for name, _, _ in command_table():
        named = help_envvars(help_text(name, work))
        for flag in ("--profile", "--json", "--quiet", "--verbose", "--log-file"):
            expected = "UPLOADER_" + flag[2:].upper().replace("-", "_")
            if named.get(flag) != [expected]:
                wrong.append((name, flag, named.get(flag)))
    assert wrong == []


def test_the_sandbox_options_can_come_from_a_profile(work: Path):
    """Fixed ([PROFILE.sandbox] holds the sandbox's options; no shared setting of the profile's level applies to it).
    README "Configuration": "Every option has three other sources besides the command line … flag > environment
    > profile > default" and "one command's options go in its own table". `uploader sandbox --help` offers
    `--profile NAME  Read settings from this profile`, but `[default.sandbox]\\nport = 9000` makes every command
    (not only the sandbox) fail with "[default.sandbox] is no command's table"."""
    (work / "uploader.toml").write_text("[default.sandbox]\nport = 9000\n")
    got = settings(work, "sandbox")
    assert got["port"] == {"value": 9000, "source": "uploader.toml:default.sandbox"}


def test_flag_beats_environment_beats_profile_beats_default_and_the_command_uses_it(work: Path):
    """README "Configuration": "flag > environment > profile > default"; `uploader config` shows where each value
    comes from (`flag`, `env NAME`, `FILE:PROFILE`, `default`); and the command really uses the winner."""
    (work / "uploader.toml").write_text('[default]\nledger = "profile.db"\n[default.run]\nconcurrency = 5\n')
    assert settings(work, "run")["max_attempts"] == {"value": 8, "source": "default"}
    assert settings(work, "run")["concurrency"] == {"value": 5, "source": "uploader.toml:default.run"}
    env = process_env(work, UPLOADER_RUN_CONCURRENCY="6", UPLOADER_LEDGER="env.db")
    got = settings(work, "run", env=env)
    assert got["concurrency"] == {"value": 6, "source": "env UPLOADER_RUN_CONCURRENCY"}
    assert got["ledger"] == {"value": "env.db", "source": "env UPLOADER_LEDGER"}
    got = settings(work, "run", "--concurrency", "3", "--ledger", "flag.db", env=env)
    assert got["concurrency"] == {"value": 3, "source": "flag"} and got["ledger"]["source"] == "flag"
    manifest = write_images(work / "m.csv", 2)
    assert up("load", str(manifest), *LOAD, cwd=work).returncode == 0
    assert up("load", str(manifest), *LOAD, cwd=work, env=env).returncode == 0
    assert up("load", str(manifest), *LOAD, "--ledger", "flag.db", cwd=work, env=env).returncode == 0
    assert {p.name for p in work.glob("*.db")} == {"profile.db", "env.db", "flag.db"}
    assert not (work / "uploader.db").exists()


@pytest.mark.parametrize("folder_level", ["profile", "command"])
def test_the_folders_file_wins_over_the_users_at_whichever_level(work: Path, folder_level: str):
    """README "Profiles": "for the same key the folder's file wins, at whichever level of the profile either file
    sets it (within one file, a command's table wins over the profile's level)"."""
    user = work / "xdg" / "uploader" / "config.toml"
    user.parent.mkdir(parents=True)
    if folder_level == "profile":
        user.write_text("[default.run]\ntimeout = 11\n")
        (work / "uploader.toml").write_text("[default]\ntimeout = 12\n")
        assert settings(work, "run")["timeout"] == {"value": 12.0, "source": "uploader.toml:default"}
    else:
        user.write_text("[default]\ntimeout = 11\n")
        (work / "uploader.toml").write_text("[default.run]\ntimeout = 12\n")
        assert settings(work, "run")["timeout"]["value"] == 12.0
    (work / "uploader.toml").write_text("[default]\ntimeout = 13\n[default.run]\ntimeout = 14\n")
    assert settings(work, "run")["timeout"]["value"] == 14.0  # within one file: the command's table
    assert settings(work, "status").get("timeout") is None  # and a command without the option does not show it


def test_the_api_key_is_shown_only_as_set_or_unset(work: Path):
    """README: "the API key is shown only as set or unset"."""
    key = "README-key-9f3e"
    assert settings(work, "run")["api_key"]["value"] == "unset"
    for how in ("env", "flag"):
        env = process_env(work, PLAYMENT_API_KEY=key) if how == "env" else None
        args = ("--api-key", key) if how == "flag" else ()
        for fmt in ((), ("--json",)):
            done = up("config", "run", *args, *fmt, cwd=work, env=env)
            assert done.returncode == 0 and key not in done.stdout + done.stderr
            assert re.search(r"\bset\b", done.stdout)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param('[default]\nledger = "a.db"\nledger = "b.db"\n', r"uploader\.toml:3:\d+", id="not-toml"),
        pytest.param("[default]\nconcurency = 4\n", r"uploader\.toml.*default.*concurency", id="unknown-key"),
        pytest.param(
            "[default.run]\nconcurrency = 3.7\n", r"uploader\.toml.*default\.run.*concurrency", id="wrong-kind"
        ),
        pytest.param(
            "[default.run]\nconcurrency = 0\n", r"uploader\.toml.*default\.run.*concurrency", id="out-of-range"
        ),
    ],
)
def test_a_bad_config_file_is_one_error_line_naming_file_and_place_exit_1(work: Path, text: str, where: str):
    """README: "A file that is not valid TOML …, an unknown key, or a value of the wrong kind … is one error line
    naming the file (and line and column, or the profile and key), exit 1"."""
    (work / "uploader.toml").write_text(text)
    done = up("run", cwd=work)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert re.search(where, line), line


def test_retry_and_forget_filters_are_never_read_from_the_environment_or_a_profile(work: Path, box):
    """README: "What `forget` and `retry` act on (their filters, `--all`) is never read from the environment or a
    profile: it is typed." A failed row stays failed and present whatever the environment says."""
    env = api_env(work, box)
    done = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, cwd=work, env=env)
    assert done.returncode == 3, done.stderr
    for variables in ({"UPLOADER_RETRY_ALL": "1"}, {"UPLOADER_RETRY_ERROR_CODE": "GE_0001"}, {"UPLOADER_ALL": "1"}):
        retried = up("retry", cwd=work, env={**env, **variables})
        assert retried.returncode == 2, (variables, retried.stdout, retried.stderr)
    forgot = up("forget", cwd=work, env={**env, "UPLOADER_FORGET_STATUS": "failed", "UPLOADER_STATUS": "failed"})
    assert forgot.returncode == 2
    for table in ("[default.retry]\nall = true\n", '[default.forget]\nstatus = "failed"\n'):
        (work / "uploader.toml").write_text(table)
        refused = up("retry" if "retry" in table else "forget", cwd=work, env=env)
        assert refused.returncode in (1, 2)
    (work / "uploader.toml").unlink()
    failed = [r for r in export_rows(work) if r["status"] == "failed"]
    assert [r["reference_id"] for r in failed] == ["ovr-001"]


# --- output ---------------------------------------------------------------------------------------------------


@pytest.fixture
def sent(work: Path, box) -> dict[str, str]:
    """A ledger in `work` (./uploader.db) after a run of images_overrides.csv: 2 succeeded, ovr-001 failed."""
    env = api_env(work, box)
    done = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, cwd=work, env=env)
    assert done.returncode == 3, done.stderr
    return env


JSON_COMMANDS = [
    ("load", [str(SAMPLES / "images.csv"), *LOAD]),
    ("plan", [str(SAMPLES / "images.csv"), *LOAD]),
    ("run", []),
    ("sync", []),
    ("adopt", ["--project-id", "demo", "--batch-id", str(uuid.uuid4())]),
    ("status", []),
    ("report", ["-o", "r.html"]),
    ("export", ["-o", "out.csv"]),
    ("retry", ["--all"]),
    ("reconcile", []),
    ("forget", ["--status", "pending"]),
    ("show", ["ovr-002"]),
    ("config", ["run"]),
    ("check", ["--sample", "1"]),
]


@pytest.mark.slow
def test_json_on_every_command_prints_one_json_document(work: Path, sent: dict[str, str]):
    """README "Output": "`--json` on every command prints one JSON document on stdout" (success or error)."""
    covered = {name for name, _ in JSON_COMMANDS}
    assert covered | {"sandbox"} == {name for name, _, _ in command_table()}
    for name, args in JSON_COMMANDS:
        done = up(name, *args, "--json", cwd=work, env=sent)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        doc = json.loads(done.stdout)  # one document: json.loads refuses a second one
        assert isinstance(doc, dict), name
        if done.returncode not in (0, 3):
            assert doc.get("exit") == done.returncode, (name, doc)


def test_export_json_without_o_prints_json_lines_as_the_readme_says(work: Path, sent: dict[str, str]):
    """Fixed (the README says `export --json` without -o prints JSON Lines).
    README "Output": "`--json` on every command prints one JSON document on stdout". `uploader export --json`
    without -o prints one JSON object per row (its --help: "jsonl with --json"): `json.loads(stdout)` fails for a
    ledger of more than one row, and a script that reads every command's --json one way breaks on this one. The
    README should say so (or export should print an array / a summary object as `export --json -o F` does)."""
    done = up("export", "--json", cwd=work, env=sent)
    assert done.returncode == 0
    assert "`export --json` without `-o`:\n  the rows themselves, one JSON object per line, JSON Lines" in README
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) > 1 and all("reference_id" in row for row in rows)


def test_a_json_error_is_one_object_on_stderr_and_on_stdout(work: Path):
    """README "Output": "an error is then a JSON object (`{"error": …, "exit": …}`) on stderr and on stdout"."""
    done = up("status", "--ledger", "missing.db", "--json", cwd=work)
    assert done.returncode == 1
    assert json.loads(done.stdout) == json.loads(done.stderr)
    assert set(json.loads(done.stdout)) == {"error", "exit"} and json.loads(done.stdout)["exit"] == 1
    usage = up("run", "--concurrency", "lots", "--json", cwd=work)
    assert usage.returncode == 2 and json.loads(usage.stdout)["exit"] == 2


def test_quiet_prints_only_errors_warnings_and_the_final_result(work: Path, box):
    """Fixed (under -q `run` leaves out the news of a created batch; waits and warnings are still told).
    README "Output": "`-q` prints only errors, warnings and the final result". `uploader run M -q` on a new
    ledger prints the final summary on stdout, and on stderr "created batch 'm.csv 2026-… UTC 3f9a1c' (id …) in
    project demo; reruns of this ledger use it", an informational notice (not prefixed `warning:` and nothing
    to act on). A cron job that mails any stderr output of `-q` gets mail for every new batch."""
    manifest = write_images(work / "m.csv", 3)
    done = up("run", str(manifest), *LOAD, "-q", cwd=work, env=api_env(work, box))
    assert done.returncode == 0, done.stderr
    assert 1 <= len(done.stdout.splitlines()) <= 3
    assert [line for line in done.stderr.splitlines() if not line.startswith(("error", "warning"))] == []


def test_verbose_logs_answers_that_are_not_a_success_and_very_verbose_every_request(work: Path, box):
    """README "Output": "`-v` logs each API answer that is not a success on stderr, `-vv` every request"."""
    env = api_env(work, box)
    one = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, "-v", "--ledger", "a.db", cwd=work, env=env)
    logged = [line for line in one.stderr.splitlines() if re.search(r"\bovr-00\d attempt", line)]
    assert len(logged) == 1 and "ovr-001" in logged[0] and "GE_0001" in logged[0]
    two = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, "-vv", "--ledger", "b.db", cwd=work, env=env)
    logged = [line for line in two.stderr.splitlines() if re.search(r"\bovr-00\d attempt", line)]
    assert sorted(re.search(r"ovr-00\d", line).group(0) for line in logged) == ["ovr-001", "ovr-002", "ovr-003"]
    assert sum("create_batch" in line for line in two.stderr.splitlines()) == 2


# --- exit codes -----------------------------------------------------------------------------------------------


def test_the_exit_code_table_lists_the_codes_this_module_checks():
    codes = re.findall(r"^\| (\d+) \|", section("Exit codes"), flags=re.M)
    assert codes == ["0", "1", "2", "3", "130", "141", "143"]


def test_exit_1_bad_manifest_2_usage_3_failed_rows(work: Path, box):
    """README "Exit codes": 1 could not run (bad manifest), 2 usage error, 3 some rows failed."""
    bad = up("load", str(SAMPLES / "broken_bad_rows.csv"), *LOAD, cwd=work)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert up("run", "--no-such-flag", cwd=work).returncode == 2
    assert up("load", str(SAMPLES / "images.csv"), *LOAD, "--column", "nonsense", cwd=work).returncode == 2
    failed = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, cwd=work, env=api_env(work, box))
    assert failed.returncode == 3
    assert "GE_0001" in failed.stdout + failed.stderr


def test_exit_141_when_the_reader_leaves_and_nothing_is_printed(work: Path):
    """README: "141 stdout was closed by its reader (`uploader export | head -1`): no error printed"."""
    write_images(work / "m.csv", 30_000)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    proc = subprocess.Popen(
        f"{sys.executable} -m uploader export 2>err.txt | head -1 >first.txt; echo ${{PIPESTATUS[0]}} > rc.txt",
        shell=True, executable="/bin/bash", cwd=work, env=process_env(work),
    )  # fmt: skip
    assert proc.wait(timeout=120) == 0
    assert (work / "rc.txt").read_text().strip() == "141"
    assert (work / "err.txt").read_text() == ""
    assert (work / "first.txt").read_text().startswith("reference_id,job_id,status")


def test_output_that_cannot_be_written_is_one_error_line_exit_1(work: Path):
    """README "Output": "Output that cannot be written (`> /dev/full`, …) is one error line, exit 1"."""
    write_images(work / "m.csv", 3)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "uploader", "export"], cwd=work, env=process_env(work),
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["ctrl-c-130", "sigterm-143", "sigkill"],
)
def test_a_stopped_or_killed_run_resumes_with_nothing_lost_and_nothing_created_twice(work: Path, sig, code):
    """README intro: "an interrupted or crashed run resumes with nothing lost and nothing created twice"; exit
    codes 130 "run the same command again to resume", 143 "stopped by SIGTERM … run the same command again"."""
    from uploader.sandbox import Sandbox, SandboxConfig

    manifest = write_images(work / "m.csv", 60)
    with Sandbox(SandboxConfig(latency_ms=60)) as sandbox:
        env = api_env(work, sandbox)
        args = ["run", str(manifest), *LOAD, "--concurrency", "2"]
        proc = spawn(*args, cwd=work, env=env)
        wait_until(lambda: sandbox.stats()["jobs_created"] >= 6, "six jobs created")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err[-2000:]
        assert "Traceback" not in err
        if sig != signal.SIGKILL:
            assert "run the same command again" in err
        again = up(*args, cwd=work, env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        stats = sandbox.stats()
        assert stats["jobs_total"] == 60 and stats["jobs_created_per_reference_id_max"] == 1
        by_ref = {job["reference_id"]: job["job_id"] for job in sandbox.jobs()}
    rows = export_rows(work)
    assert len(rows) == 60 and all(r["status"] == "succeeded" for r in rows)
    assert {r["reference_id"]: r["job_id"] for r in rows} == by_ref


# --- the ledger -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ledger", ["folder", ":memory:", "sqlite://"])
def test_a_ledger_that_is_a_folder_or_in_memory_is_refused_in_one_line(work: Path, ledger: str):
    """README "The ledger": "A folder, `:memory:` or `sqlite://` … is refused with one line, exit 1"."""
    if ledger == "folder":
        (work / "folder").mkdir()
    done = up("status", "--ledger", ledger, cwd=work)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_csv_passed_as_ledger_is_refused_by_name_and_left_unchanged(work: Path):
    """README: "not a database at all (a CSV passed as `--ledger`) … is refused by every command with one message
    naming the file and what to do …, exit 1, and is left unchanged"."""
    target = work / "images.csv"
    shutil.copy(SAMPLES / "images.csv", target)
    before = target.read_bytes()
    for args in (["status"], ["export"], ["load", str(SAMPLES / "images.csv"), *LOAD]):
        done = up(*args, "--ledger", str(target), cwd=work)
        assert done.returncode == 1, args
        assert "images.csv" in done.stderr and "Traceback" not in done.stderr
    assert target.read_bytes() == before
    assert not [p for p in work.iterdir() if p.name.startswith("images.csv-")]


def test_the_state_table_is_what_status_counts(work: Path):
    """README "The ledger": the state table names the states `uploader status` counts (and `export --status`
    takes)."""
    write_images(work / "m.csv", 2)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    counts = json.loads(up("status", "--json", cwd=work).stdout)["counts"]
    assert sorted(counts) == sorted(state_table())
    for state in state_table():
        assert up("export", "--status", state, cwd=work).returncode == 0, state


def test_failed_to_pending_by_retry_with_attempts_reset(work: Path, sent: dict[str, str]):
    """README: "`uploader retry --error-code CODE …` failed (or blocked) → pending, attempts reset"; the diagram's
    `failed ──retry──► pending`; export gives a job_id only for succeeded (and conflict) rows."""
    rows = {r["reference_id"]: r for r in export_rows(work)}
    assert rows["ovr-001"]["status"] == "failed" and rows["ovr-001"]["job_id"] is None
    assert rows["ovr-001"]["error_code"] == "GE_0001" and rows["ovr-001"]["attempts"] == 1
    assert all(rows[r]["job_id"] for r in ("ovr-002", "ovr-003"))
    done = up("retry", "--error-code", "GE_0001", cwd=work, env=sent)
    assert done.returncode == 0, done.stderr
    shown = json.loads(up("show", "ovr-001", "--json", cwd=work).stdout)
    assert shown["status"] == "pending" and shown["attempts"] == 0


def test_a_row_whose_attachment_fails_is_blocked_then_released(work: Path, box):
    """README "Checking attachments": a row with a bad attachment becomes `blocked`, `uploader check` exits 3,
    "`export --status blocked` shows the URL and the reason in its error columns", "`uploader retry --blocked`
    releases the rows"; a run without --allow-blocked never sends it."""
    env = api_env(work, box)
    (work / "m.csv").write_text(
        "reference_id,image_url\n"
        f"good,{box.base_url}/_sandbox/files/good.jpg\n"
        f"gone,{box.base_url}/_sandbox/files/gone.jpg?status=404\n"
    )
    checked = up("check", "m.csv", *LOAD, cwd=work, env=env)
    assert checked.returncode == 3, checked.stdout + checked.stderr
    (blocked,) = export_rows(work, "--status", "blocked")
    assert blocked["reference_id"] == "gone"
    assert "gone.jpg" in (blocked["error_message"] or "") and "404" in json.dumps(blocked)
    ran = up("run", cwd=work, env=env)
    assert ran.returncode == 3
    assert [j["reference_id"] for j in box.jobs()] == ["good"]
    assert up("retry", "--blocked", cwd=work).returncode == 0
    assert json.loads(up("show", "gone", "--json", cwd=work).stdout)["status"] == "pending"
    # "a reload with a changed payload makes it pending"; "`run --allow-blocked` sends them as they are"
    assert up("check", cwd=work, env=env).returncode == 3
    (work / "m2.csv").write_text(
        f"reference_id,image_url\ngood,{box.base_url}/_sandbox/files/good.jpg\ngone,{box.base_url}/_sandbox/files/fixed.jpg\n"
    )
    assert up("load", "m2.csv", *LOAD, cwd=work).returncode == 0
    assert json.loads(up("show", "gone", "--json", cwd=work).stdout)["status"] == "pending"
    assert up("check", cwd=work, env=env).returncode == 0
    (work / "m3.csv").write_text("reference_id,image_url\nlate," + f"{box.base_url}/_sandbox/files/x.jpg?status=403\n")
    assert up("check", "m3.csv", *LOAD, cwd=work, env=env).returncode == 3
    assert up("run", "--allow-blocked", cwd=work, env=env).returncode == 0
    assert sorted(j["reference_id"] for j in box.jobs()) == ["gone", "good", "late"]


def test_a_reference_id_created_elsewhere_is_a_conflict_never_sent_again(work: Path, box):
    """README state table: `conflict` … "`created_elsewhere` (FS_0001 for a reference_id this ledger had never sent:
    origin `pre-existing`; its job_id is recorded when the job is in the row's batch, else unknown)"; "`run` and
    `reconcile` exit 3"; export shows it."""
    import httpx

    body = {"reference_id": "img-0001", "work_flow_id": "wf-1", "data": {"image_url": "https://other.com/x.jpg"}}
    made = httpx.post(f"{box.base_url}/v1/projects/demo/jobs", json=body, headers={"x-api-key": box.api_key})
    assert made.json()["success"] is True
    env = api_env(work, box)
    write_images(work / "m.csv", 3)
    done = up("run", "m.csv", *LOAD, cwd=work, env=env)
    assert done.returncode == 3, done.stderr
    rows = {r["reference_id"]: r for r in export_rows(work)}
    assert rows["img-0001"]["status"] == "conflict" and rows["img-0001"]["error_code"] == "created_elsewhere"
    assert rows["img-0001"]["origin"] == "pre-existing"
    assert rows["img-0001"]["job_id"] is None  # the job is in the default batch, not the row's
    requests = box.stats()["requests_total"]
    assert up("run", "m.csv", *LOAD, cwd=work, env=env).returncode == 3
    assert up("reconcile", cwd=work, env=env).returncode == 3
    assert box.stats()["max_requests_per_reference_id"] == 2  # never sent again (one listing lookup aside)
    assert box.stats()["requests_total"] - requests <= 4


def test_plan_sends_nothing_writes_nothing_and_exits_3_when_it_would_hold_back(work: Path, box):
    """README: "`uploader plan MANIFEST …` a dry run that sends nothing and writes nothing … exit 3 when something
    would be held back. The ledger file is byte for byte unchanged"."""
    env = api_env(work, box)
    write_images(work / "m.csv", 3)
    assert up("run", "m.csv", *LOAD, "-q", cwd=work, env=env).returncode == 0
    requests = box.stats()["requests_total"]
    (work / "m2.csv").write_text(
        "reference_id,image_url\nimg-0000,https://e.com/changed.jpg\nimg-0001,https://e.com/1.jpg\nnew-1,https://e.com/n.jpg\n"
    )
    up("status", cwd=work)  # let the last run's WAL settle into the file before the snapshot
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.name.startswith("uploader.db")}
    plain = up("plan", "m.csv", *LOAD, cwd=work, env=env)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    held = up("plan", "m2.csv", *LOAD, "--json", cwd=work, env=env)
    assert held.returncode == 3, held.stdout + held.stderr
    json.loads(held.stdout)
    assert '"image_url"' in up("plan", "m2.csv", *LOAD, cwd=work, env=env).stdout  # the first payload, printed
    after = {p.name: p.read_bytes() for p in work.iterdir() if p.name.startswith("uploader.db")}
    assert after == before
    assert box.stats()["requests_total"] == requests
    # the run itself: "a succeeded row whose payload changed is left alone and reported as a conflict — it is never
    # sent again silently"; exit 3 for "rows the run's own load held back, sent before with another payload"
    ran = up("run", "m2.csv", *LOAD, cwd=work, env=env)
    assert ran.returncode == 3, ran.stdout + ran.stderr
    jobs = {j["reference_id"]: j for j in box.jobs()}
    assert jobs["img-0000"]["data"]["image_url"] == "https://e.com/0.jpg" and "new-1" in jobs
    assert box.stats()["max_requests_per_reference_id"] == 1


def test_batches_the_ledgers_own_named_per_project_and_the_default_batch(work: Path, box):
    """README "Batches": rows without a batch go into "a batch the ledger creates for the project …, named after the
    manifest, the date and a short suffix (e.g. `images.csv 2026-12-02 16:40 UTC 3f9a1c`) and reused on every rerun";
    "`--batch-name N` gives every project its own batch named N"; "`--default-batch` sends such rows to the
    project's "Default batch"" (the sandbox's id: uuid5 of "sandbox-default-batch/<project_id>")."""
    from uploader.sandbox import default_batch_id

    env = api_env(work, box)
    write_images(work / "m.csv", 2)
    first = up("run", "m.csv", *LOAD, cwd=work, env=env)
    assert first.returncode == 0
    assert re.search(r"created batch 'm\.csv \d{4}-\d\d-\d\d \d\d:\d\d UTC [0-9a-f]{6}' \(id ", first.stderr), (
        first.stderr
    )
    write_images(work / "m.csv", 3)
    again = up("run", "m.csv", *LOAD, cwd=work, env=env)
    assert again.returncode == 0 and "created batch" not in again.stderr
    assert box.stats()["batches_created"] == 1 and len({j["batch_id"] for j in box.jobs()}) == 1
    named = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, "--batch-name", "NB", "--ledger", "n.db", cwd=work,
               env=env)  # fmt: skip
    assert named.returncode == 3
    made = re.findall(r"created batch 'NB' \(id [0-9a-f-]+\) in project ([\w-]+)", named.stderr)
    assert sorted(made) == ["demo", "proj-b"]
    jobs = {j["reference_id"]: j for j in box.jobs()}
    assert jobs["ovr-002"]["batch_id"] != jobs["ovr-003"]["batch_id"]
    (work / "d.csv").write_text("reference_id,image_url\nd1,https://e.com/d1.jpg\n")
    assert up("run", "d.csv", *LOAD, "--default-batch", "--ledger", "d.db", cwd=work, env=env).returncode == 0
    assert {j["reference_id"]: j["batch_id"] for j in box.jobs()}["d1"] == default_batch_id("demo")


# --- export ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_columns_names_types_and_files(work: Path, box, tmp_path: Path):
    """README export row: the columns in its order, then the manifest's extra columns ("one named like a column
    above comes back as `manifest.<name>`"); ISO 8601 UTC times after `sync`; `--status completed` by platform
    status; `-o`: new files 0600, an existing file's mode kept, a missing folder one error line exit 1, the
    ledger's own file refused."""
    from uploader.sandbox import Sandbox, SandboxConfig

    (work / "m.csv").write_text(
        "reference_id,image_url,status,job_id,note\n"
        "a,https://e.com/a.jpg,raw,J-from-manifest,=1+1\n"
        "b,https://e.com/b.jpg,cooked,J2,-5\n"
    )
    with Sandbox(SandboxConfig(complete_after_s=0)) as done_box:
        env = api_env(work, done_box)
        assert up("run", "m.csv", *LOAD, "-q", cwd=work, env=env).returncode == 0
        synced = up("sync", "--results", "res", cwd=work, env=env)
        assert synced.returncode == 0, synced.stderr
    header = up("export", cwd=work).stdout.splitlines()[0].split(",")
    assert header == [*EXPORT_COLUMNS, "manifest.status", "manifest.job_id", "note"]
    rows = {r["reference_id"]: r for r in export_rows(work, "--status", "completed")}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["manifest.status"] == "raw" and rows["a"]["manifest.job_id"] == "J-from-manifest"
    assert rows["a"]["status"] == "succeeded" and rows["a"]["job_id"] != "J-from-manifest"
    assert rows["b"]["note"] == "-5" and rows["a"]["note"] == "=1+1"  # verbatim
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rows["a"]["platform_status_at"])
    assert rows["a"]["result_path"] == str((work / "res" / "a.json").resolve())
    assert (work / "res" / "a.json").is_file() and (work / "res" / "b.json").is_file()  # DIR/<reference_id>.json
    assert export_rows(work, "--platform-status", "completed") and not export_rows(work, "--status", "failed")
    import pyarrow.parquet as pq

    assert up("export", "-o", "o.parquet", cwd=work).returncode == 0
    column = pq.read_table(work / "o.parquet").schema.field("platform_status_at").type
    assert str(column).startswith("timestamp") and "UTC" in str(column)
    assert stat.S_IMODE((work / "o.parquet").stat().st_mode) == 0o600
    kept = work / "kept.csv"
    kept.write_text("old\n")
    kept.chmod(0o644)
    assert up("export", "-o", str(kept), cwd=work).returncode == 0
    assert stat.S_IMODE(kept.stat().st_mode) == 0o644 and kept.read_text().startswith("reference_id,")
    for target in ("nodir/x.csv", "uploader.db"):
        refused = up("export", "-o", target, cwd=work)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, target
    assert up("status", cwd=work).returncode == 0  # the ledger survived the slip


def test_export_spreadsheet_safe_and_the_api_messages_quote(work: Path, box):
    """README export row: "in CSV the API's error texts get a leading `'` when they start with `= + - @`…, and
    `--spreadsheet-safe` does that to every cell"; "(`-5`, `=1+1` are ids like any other)"."""
    (work / "m.csv").write_text("reference_id,image_url\n=1+1,https://e.com/a.jpg\n-5,https://e.com/b.jpg\n")
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    plain = list(csv.DictReader(io.StringIO(up("export", cwd=work).stdout)))
    assert [r["reference_id"] for r in plain] == ["=1+1", "-5"]
    safe = list(csv.DictReader(io.StringIO(up("export", "--spreadsheet-safe", cwd=work).stdout)))
    assert [r["reference_id"] for r in safe] == ["'=1+1", "'-5"]


# --- manifests and the sample manifests ------------------------------------------------------------------------


def _sent_data(work: Path, box, manifest: str, *extra: str) -> dict[str, dict]:
    done = up("run", manifest, *LOAD, *extra, "-q", cwd=work, env=api_env(work, box))
    assert done.returncode == 0, done.stderr
    return {job["reference_id"]: job for job in box.jobs()}


def test_sample_images_csv_and_parquet_are_the_same_12_rows_and_camera_is_not_sent(work: Path, box):
    """sample_manifests/README.md: images.csv "12 rows, with an extra `camera` column (kept for export, not sent)";
    images.parquet "the same 12 rows as images.csv"."""
    jobs = _sent_data(work, box, str(SAMPLES / "images.csv"))
    assert len(jobs) == 12 and all(set(j["data"]) == {"image_url"} for j in jobs.values())
    assert up("load", str(SAMPLES / "images.parquet"), *LOAD, cwd=work).stdout.count("12 unchanged") == 1
    assert all(r["camera"] for r in export_rows(work))


def test_sample_videos_long_and_wide_form_send_frames_in_order(work: Path, box):
    """README "Manifests": long form "one row per frame; order = row order within the reference_id", wide form
    sends the same `{"video_data": {"frames": [...]}}`; samples: video_frames.csv "3 videos × 4 frames, rows of the
    videos interleaved", video.jsonl with "an extra `camera` key"."""
    jobs = _sent_data(work, box, str(SAMPLES / "video_frames.csv"))
    assert sorted(jobs) == ["vid-001", "vid-002", "vid-003"]
    frames = jobs["vid-002"]["data"]["video_data"]["frames"]
    assert [f["frame_id"] for f in frames] == ["frame001", "frame002", "frame003", "frame004"]
    assert frames[0]["src"].endswith("/vid-002/frame001.jpg")
    jobs = _sent_data(work, box, str(SAMPLES / "video.jsonl"))
    clip = jobs["clip-001"]["data"]
    assert set(clip) == {"video_data"} and len(clip["video_data"]["frames"]) == 3
    assert {r["camera"] for r in export_rows(work) if r["reference_id"].startswith("clip")} == {"dashcam"}


def test_sample_sensor_jsonl_data_is_sent_unchanged(work: Path, box):
    """README: raw shape, "`data` (a JSON object, sent unchanged)"."""
    jobs = _sent_data(work, box, str(SAMPLES / "sensor.jsonl"))
    lines = [json.loads(line) for line in (SAMPLES / "sensor.jsonl").read_text().splitlines()]
    assert {line["reference_id"]: line["data"] for line in lines} == {r: j["data"] for r, j in jobs.items()}


def test_sample_overrides_use_per_row_columns_and_fall_back_to_the_flags(work: Path, sent: dict[str, str], box):
    """sample README: images_overrides.csv has per-row `project_id`, `batch_id`, `priority_weight`, `metadata`
    ("empty cells fall back to the command-line defaults"); ovr-001 fails with `GE_0001 invalid parameter:
    batch_id`; README "Manifests": `metadata` "sent as `data.metadata`"."""
    jobs = {j["reference_id"]: j for j in box.jobs()}
    assert set(jobs) == {"ovr-002", "ovr-003"}
    assert jobs["ovr-002"]["project_id"] == "demo" and jobs["ovr-002"]["priority_weight"] == 5
    assert jobs["ovr-003"]["project_id"] == "proj-b" and jobs["ovr-003"]["priority_weight"] == 2
    assert jobs["ovr-003"]["data"]["metadata"] == {"weather": "sun"}
    (failed,) = export_rows(work, "--status", "failed")
    assert (failed["reference_id"], failed["project_id"], failed["error_code"]) == ("ovr-001", "proj-a", "GE_0001")
    assert "batch_id" in failed["error_message"]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            "broken_bad_rows.csv",
            [(3, "image_url"), (4, "reference_id"), (5, "priority_weight"), (6, "reference_id")],
        ),
        ("broken_json.jsonl", [(2, None), (3, None), (4, "data"), (5, "reference_id"), (6, "data")]),
    ],
)
def test_broken_samples_are_refused_with_file_line_and_column(work: Path, sample: str, expected):
    """README "Manifests": "each problem is printed with file, line (the header is line 1 …) and column … Exit code
    1", nothing loaded; the sample README lists the lines: broken_bad_rows.csv 3, 4, 5, 6; broken_json.jsonl
    2 to 6."""
    write_images(work / "ok.csv", 1)
    assert up("load", "ok.csv", *LOAD, "-q", cwd=work).returncode == 0
    before = (work / "uploader.db").read_bytes()
    done = up("load", str(SAMPLES / sample), *LOAD, cwd=work)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if re.match(rf".*{re.escape(sample)}:\d+", line)]
    found = []
    for line in problems:
        match = re.search(rf"{re.escape(sample)}:(\d+):(?: column '(\w+)')?", line)
        found.append((int(match.group(1)), match.group(2)))
    assert found == expected
    assert (work / "uploader.db").read_bytes() == before


def test_the_missing_column_sample_is_refused_whole_and_loads_with_column(work: Path):
    """sample README: broken_missing_column.csv "has `url` instead of `image_url`: refused as a whole (or load it
    with `--column image_url=url`)"."""
    sample = str(SAMPLES / "broken_missing_column.csv")
    refused = up("load", sample, *LOAD, cwd=work)
    assert refused.returncode == 1 and "image_url" in refused.stderr
    assert up("load", sample, *LOAD, "--column", "image_url=url", cwd=work).returncode == 0


def test_only_the_first_20_problems_are_listed_then_a_count(work: Path):
    """README "Manifests": "each problem is printed … — the first 20, then a count"."""
    (work / "bad.csv").write_text("reference_id,image_url\n" + "".join(f"r{i},nope{i}\n" for i in range(25)))
    done = up("load", "bad.csv", *LOAD, cwd=work)
    assert done.returncode == 1
    listed = re.findall(r"bad\.csv:(\d+): column 'image_url'", done.stderr)
    assert listed == [str(n) for n in range(2, 22)]
    assert "25" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("suffix", [".tsv", ".ndjson", ".jsonl", ".parquet"])
def test_format_by_extension_and_values_stay_verbatim(work: Path, suffix: str):
    """README "Manifests": "Format by extension — `.csv`, `.tsv`, `.parquet`, `.jsonl` / `.ndjson`"; "Every value is
    text and stays verbatim (`001`, `NaN`, `null`, `1e5` are reference_ids, not numbers)"."""
    ids = ["001", "NaN", "null", "1e5"]
    path = work / f"m{suffix}"
    if suffix == ".tsv":
        path.write_text(
            "reference_id\timage_url\n" + "".join(f"{i}\thttps://e.com/{n}.jpg\n" for n, i in enumerate(ids))
        )
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        urls = [f"https://e.com/{n}.jpg" for n in range(len(ids))]
        pq.write_table(pa.table({"reference_id": ids, "image_url": urls}), path)
    else:
        path.write_text(
            "".join(
                json.dumps({"reference_id": i, "image_url": f"https://e.com/{n}.jpg"}) + "\n" for n, i in enumerate(ids)
            )
        )
    done = up("load", path.name, *LOAD, cwd=work)
    assert done.returncode == 0, done.stderr
    assert sorted(r["reference_id"] for r in export_rows(work)) == sorted(ids)


def test_stdin_manifest_with_format_is_recorded_as_stdin(work: Path):
    """README load row: "MANIFEST `-` is stdin …: spooled to a temporary file, format from `--format` or sniffed …,
    recorded as `<stdin>`"."""
    text = (SAMPLES / "images.csv").read_text()
    for args in (["--format", "csv"], []):
        done = up("load", "-", *LOAD, *args, "--ledger", f"l{len(args)}.db", cwd=work, input=text)
        assert done.returncode == 0, done.stderr
        shown = json.loads(up("show", "img-001", "--json", "--ledger", f"l{len(args)}.db", cwd=work).stdout)
        assert shown["manifest"] == "<stdin>"


def test_a_json_object_giving_a_key_twice_and_an_overlong_url_are_refused(work: Path):
    """README "Manifests": "A JSON object … that gives a key twice is refused"; "An `image_url` … is at most 8,192
    characters"; file, line and column named."""
    (work / "dup.jsonl").write_text(
        '{"reference_id": "a", "data": {"image_url": "https://e.com/0"}}\n'
        '{"reference_id": "b", "data": {"image_url": "https://e.com/1", "image_url": "x"}}\n'
    )
    done = up("load", "dup.jsonl", *LOAD, cwd=work)
    assert done.returncode == 1 and "dup.jsonl:2" in done.stderr and "twice" in done.stderr
    fits = "https://e.com/" + "a" * (8192 - len("https://e.com/"))
    (work / "long.csv").write_text(f"reference_id,image_url\nok,{fits}\nlong,{fits}b\n")
    done = up("load", "long.csv", *LOAD, cwd=work)
    assert done.returncode == 1
    assert re.findall(r"long\.csv:(\d+): column '(\w+)'", done.stderr) == [("3", "image_url")]


def test_extra_columns_keep_their_types_in_json_lines_and_parquet(work: Path):
    """README export row: "the manifest's extra columns, verbatim and with their types (a Parquet or JSON number,
    boolean or null is one again in JSON Lines and Parquet; a Parquet double's NaN or infinity stays one in Parquet,
    is `null` in JSON Lines …, and `NaN`/`Infinity` in CSV; … a column mixing kinds is text in Parquet)"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [
        {"reference_id": "a", "image_url": "https://e.com/a", "n": 5, "f": 1.5, "b": True, "z": None, "mix": 1},
        {"reference_id": "b", "image_url": "https://e.com/b", "n": 6, "f": 2.0, "b": False, "z": None, "mix": "x"},
    ]
    (work / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert up("load", "m.jsonl", *LOAD, "-q", cwd=work).returncode == 0
    rows = export_rows(work)
    assert [{k: r[k] for k in ("n", "f", "b", "z", "mix")} for r in rows] == [
        {k: line[k] for k in ("n", "f", "b", "z", "mix")} for line in lines
    ]
    assert up("export", "-o", "o.parquet", cwd=work).returncode == 0
    table = pq.read_table(work / "o.parquet")
    assert [str(table.schema.field(c).type) for c in ("n", "f", "b", "mix")] == ["int64", "double", "bool", "string"]
    pq.write_table(
        pa.table({"reference_id": ["a", "b"], "image_url": ["https://e.com/a"] * 2, "d": [float("nan"), float("inf")]}),
        work / "d.parquet",
    )
    assert up("load", "d.parquet", *LOAD, "--ledger", "d.db", "-q", cwd=work).returncode == 0
    as_csv = list(csv.DictReader(io.StringIO(up("export", "--ledger", "d.db", cwd=work).stdout)))
    assert [r["d"] for r in as_csv] == ["NaN", "Infinity"]
    assert [r["d"] for r in export_rows(work, "--ledger", "d.db")] == [None, None]


def test_check_sample_reports_each_hosts_failure_rate_and_blocks_nothing(work: Path, box):
    """README check row: "`--sample N`: N random URLs per host, each host's failure rate, nothing blocked"."""
    (work / "m.csv").write_text(
        "reference_id,image_url\n"
        + "".join(f"r{i},{box.base_url}/_sandbox/files/{i}.jpg{'?status=404' if i % 2 else ''}\n" for i in range(10))
    )
    done = up("check", "m.csv", *LOAD, "--sample", "4", "--json", cwd=work, env=api_env(work, box))
    assert done.returncode == 0, done.stdout + done.stderr
    json.loads(done.stdout)
    assert sum(box.stats()["file_requests"].values()) == 4
    assert json.loads(up("status", "--json", cwd=work).stdout)["counts"]["blocked"] == 0
    text = up("check", "--sample", "4", cwd=work, env=api_env(work, box)).stdout
    assert re.search(r"127\.0\.0\.1:\d+: 4 of 10 URLs checked, [\d.]+% bad", text), text


# --- follow-up hints, the base URL, forget ------------------------------------------------------------------------


def test_follow_up_hints_repeat_the_ledger_shell_quoted(work: Path, box):
    """README: "The follow-up commands a command suggests (`uploader export …`, `retry …`, `reconcile`) repeat its
    `--ledger` … when given on the command line, shell-quoted"."""
    done = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, "--ledger", "my jobs.db", cwd=work,
              env=api_env(work, box))  # fmt: skip
    assert done.returncode == 3
    assert "uploader export -o jobs.csv --ledger 'my jobs.db'" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("http://api.example.com", None),
        ("https://user:hunter2secret@api.example.com", "hunter2secret"),
        ("https://api.example.com/?key=hunter2secret", "hunter2secret"),
        ("https://api.example.com/#hunter2secret", "hunter2secret"),
    ],
)
def test_a_base_url_that_is_plain_http_or_holds_credentials_is_refused_without_quoting_them(
    work: Path, url: str, secret: str | None
):
    """README: "plain http is refused unless the host is loopback or `--allow-http` is given, and so are
    credentials, a query or a fragment in it (the refusal does not quote them: they may hold a key)"."""
    write_images(work / "m.csv", 1)
    env = process_env(work, PLAYMENT_API_KEY="k")
    done = up("run", "m.csv", *LOAD, "--base-url", url, cwd=work, env=env)
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    if secret:
        assert secret not in done.stdout + done.stderr
    else:
        allowed = settings(work, "run", "--base-url", url, "--allow-http", env=env)
        assert allowed["base_url"]["value"] == url


def test_forget_needs_a_filter_and_names_the_manifests_it_knows(work: Path):
    """README forget row: "(at least one filter)"; "`--manifest`: … a file the ledger never loaded is an error naming
    the ones it did, exit 1"; `--reference-id-file` removes those rows."""
    write_images(work / "m.csv", 3)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    assert up("forget", cwd=work).returncode == 2
    unknown = up("forget", "--manifest", "other.csv", cwd=work)
    assert unknown.returncode == 1 and "m.csv" in unknown.stderr
    (work / "ids.txt").write_bytes(b"\xef\xbb\xbfimg-0000\r\nimg-0001\r\n")
    assert up("forget", "--reference-id-file", "ids.txt", cwd=work).returncode == 0
    assert [r["reference_id"] for r in export_rows(work)] == ["img-0002"]
    assert up("forget", "--manifest", "./m.csv", cwd=work).returncode == 0
    assert export_rows(work) == []


def test_status_counts_per_project_and_report_writes_one_page_without_script(work: Path, sent: dict[str, str]):
    """README: `uploader status [--json]` "counts per state (and per project when the ledger holds several) and error
    code, jobs by origin"; `uploader report [-o report.html]` "one self-contained HTML page: no script"."""
    doc = json.loads(up("status", "--json", cwd=work).stdout)
    assert sorted(doc["projects"]) == ["demo", "proj-a", "proj-b"]
    assert doc["projects"]["proj-a"]["failed"] == 1 and doc["error_codes"] == {"GE_0001": 1}
    assert doc["origins"] == {"created": 2}
    done = up("report", cwd=work)
    assert done.returncode == 0, done.stderr
    page = (work / "report.html").read_text()
    assert "<script" not in page.lower() and "GE_0001" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing from the network


def test_sync_records_a_deleted_job_as_failed_job_not_found_and_retry_sends_it_again(work: Path, box):
    """README sync row: "a job the API does not know (GET job refused with `FS_0006` …) is named on stderr … and its
    row recorded `failed` with `job_not_found` (the dead job_id only in its message, so `export` hands it out no
    more …: `uploader retry --error-code job_not_found` does it …), exit 3"."""
    import httpx

    env = api_env(work, box)
    write_images(work / "m.csv", 2)
    assert up("run", "m.csv", *LOAD, "-q", cwd=work, env=env).returncode == 0
    dead = next(j["job_id"] for j in box.jobs() if j["reference_id"] == "img-0000")
    assert httpx.delete(f"{box.base_url}/_sandbox/jobs/{dead}").status_code == 200
    done = up("sync", cwd=work, env=env)
    assert done.returncode == 3, done.stderr
    assert "img-0000" in done.stderr
    assert json.loads(up("sync", "--json", cwd=work, env=env).stdout)["jobs_not_found"] == 0  # recorded already
    (row,) = export_rows(work, "--status", "failed")
    assert row["reference_id"] == "img-0000" and row["error_code"] == "job_not_found"
    assert row["job_id"] is None and dead in row["error_message"]
    assert up("retry", "--error-code", "job_not_found", cwd=work).returncode == 0
    assert up("run", cwd=work, env=env).returncode == 0
    assert {r["reference_id"]: r["status"] for r in export_rows(work)} == {
        "img-0000": "succeeded",
        "img-0001": "succeeded",
    }


def test_adopt_gives_a_row_the_job_of_the_batch_and_adds_a_row_for_a_job_without_one(work: Path, box):
    """README adopt row: "a row with the same reference_id takes the job_id (origin `adopted`) and `run` sends
    nothing for it; a job with no row gets a row of its own with no payload, never sent, so `export` shows it"."""
    import httpx

    key = {"x-api-key": box.api_key}
    batch = httpx.post(f"{box.base_url}/v1/projects/demo/batch", json={"name": "ui", "description": ""}, headers=key)
    batch_id = batch.json()["data"]["batch_id"]
    made = {}
    for ref in ("img-0000", "ui-only"):
        body = {
            "reference_id": ref,
            "work_flow_id": "wf-1",
            "batch_id": batch_id,
            "data": {"image_url": "https://e.com/0.jpg"},
        }
        made[ref] = httpx.post(f"{box.base_url}/v1/projects/demo/jobs", json=body, headers=key).json()["data"]["job_id"]
    env = api_env(work, box)
    write_images(work / "m.csv", 2)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    done = up("adopt", "--project-id", "demo", "--batch-id", batch_id, cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    rows = {r["reference_id"]: r for r in export_rows(work)}
    assert (rows["img-0000"]["job_id"], rows["img-0000"]["origin"]) == (made["img-0000"], "adopted")
    assert (rows["ui-only"]["job_id"], rows["ui-only"]["status"]) == (made["ui-only"], "succeeded")
    assert up("run", cwd=work, env=env).returncode == 0
    assert sorted(j["reference_id"] for j in box.jobs()) == ["img-0000", "img-0001", "ui-only"]
    assert box.stats()["jobs_created_per_reference_id_max"] == 1


def test_load_counts_signed_urls_expiring_before_min_url_validity(work: Path):
    """README load row: "prints … how many signed URLs of the pending rows expire before now + `--min-url-validity`
    (the earliest expiry)"; "`load --json`: `signed_urls`"."""
    signed = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 60))
    url = (
        "https://b.s3.amazonaws.com/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x"
        f"&X-Amz-Date={signed}&X-Amz-Expires=3600&X-Amz-Signature=abc"
    )
    (work / "s.csv").write_text(f"reference_id,image_url\na,{url}\nb,https://e.com/b.jpg\n")
    doc = json.loads(up("load", "s.csv", *LOAD, "--json", cwd=work).stdout)["signed_urls"]
    assert doc["urls"] == 1 and doc["expiring"] == 1 and doc["earliest_expiry"]
    short = json.loads(up("load", "s.csv", *LOAD, "--json", "--min-url-validity", "10m", "--ledger", "b.db",
                          cwd=work).stdout)  # fmt: skip
    assert short["signed_urls"]["expiring"] == 0


def test_the_api_key_file_drops_one_trailing_newline_and_logs_never_hold_the_key(work: Path, box):
    """README: "keep the key in a file (`--api-key-file …`, or `PLAYMENT_API_KEY_FILE`)"; `--log-file PATH` "appends
    one JSON line per API request …: a job creation with its reference_id and attempt; … each with time, HTTP
    status, code, outcome and latency in ms, never the key"."""
    (work / "key").write_text(box.api_key + "\n")
    write_images(work / "m.csv", 2)
    env = process_env(work, PLAYMENT_BASE_URL=box.base_url)
    done = up("run", "m.csv", *LOAD, "--api-key-file", "key", "--log-file", "run.log", cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (work / "run.log").read_text().splitlines()]
    jobs = [e for e in lines if e.get("endpoint") == "create_job"]
    assert sorted(e["reference_id"] for e in jobs) == ["img-0000", "img-0001"]
    assert all({"time", "http_status", "code", "outcome", "latency_ms", "attempt"} <= set(e) for e in jobs)
    assert box.api_key not in (work / "run.log").read_text()
    env_file = process_env(work, PLAYMENT_BASE_URL=box.base_url, PLAYMENT_API_KEY_FILE=str(work / "key"))
    assert up("run", "m.csv", *LOAD, cwd=work, env=env_file).returncode == 0


def test_a_log_file_that_is_a_loaded_manifest_is_refused_when_resuming_too(work: Path, box):
    """Fixed (a --log-file that is a manifest the ledger loaded is refused: cli/app.py).
    README "Output": "An output that is the ledger's own file … or, for `--log-file`, the manifest is refused with
    one line, exit 1". `uploader run m.csv --log-file m.csv` is refused, but the resume the README tells the user to
    type ("rerun to resume": `uploader run … --log-file m.csv` without the manifest) appends the log to m.csv, the
    manifest the ledger loaded (`uploader show` names it). The manifest is then damaged: `uploader load m.csv`
    fails with "row has 12 fields but the header has 2", and the file no longer matches what was loaded. I think
    the product is wrong: the ledger knows the paths of its manifests and could refuse them as it refuses its
    own file."""
    env = api_env(work, box)
    write_images(work / "m.csv", 2)
    before = (work / "m.csv").read_bytes()
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    done = up("run", *LOAD, "--log-file", "m.csv", cwd=work, env=env)
    assert (work / "m.csv").read_bytes() == before
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1


def test_plan_refuses_an_older_ledger_in_one_line_naming_the_upgrading_command(work: Path):
    """README plan row: "a ledger written by an older uploader is not upgraded but refused, in one line naming the
    command that upgrades it"; "The ledger file is byte for byte unchanged"."""
    from tests.conftest import migrate_sqlite

    write_images(work / "m.csv", 2)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    migrate_sqlite(work / "uploader.db", "0008", down=True)
    before = (work / "uploader.db").read_bytes()
    done = up("plan", "m.csv", *LOAD, cwd=work)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert re.search(r"`uploader \w+", line), line
    assert (work / "uploader.db").read_bytes() == before
    assert not [p.name for p in work.iterdir() if p.name.startswith("uploader.db-")]


def test_export_to_a_symlink_writes_its_target_and_to_a_fifo_straight_through(work: Path):
    """README export row: "a symlink's target is written that way [a temporary file beside it, renamed; its mode
    kept]; a FIFO … is written straight through"."""
    write_images(work / "m.csv", 2)
    assert up("load", "m.csv", *LOAD, "-q", cwd=work).returncode == 0
    (work / "real.csv").write_text("old\n")
    (work / "real.csv").chmod(0o640)
    (work / "link.csv").symlink_to("real.csv")
    assert up("export", "-o", "link.csv", cwd=work).returncode == 0
    assert (work / "link.csv").is_symlink() and (work / "real.csv").read_text().startswith("reference_id,")
    assert stat.S_IMODE((work / "real.csv").stat().st_mode) == 0o640
    os.mkfifo(work / "pipe")
    reader = subprocess.Popen(["cat", str(work / "pipe")], stdout=subprocess.PIPE, text=True)
    done = up("export", "-o", "pipe", cwd=work)
    out, _ = reader.communicate(timeout=30)
    assert done.returncode == 0 and out.splitlines()[0].startswith("reference_id,") and len(out.splitlines()) == 3
    assert stat.S_ISFIFO((work / "pipe").stat().st_mode)


def test_config_shows_the_proxy_with_its_password_hidden(work: Path):
    """README: "`uploader config` shows the proxies in effect and their variables (a proxy URL's user and password
    as `***` …)"."""
    env = process_env(work, HTTPS_PROXY="http://alice:s3cr3tpw@proxy.example:3128", NO_PROXY="internal.example")
    done = up("config", "run", cwd=work, env=env)
    assert done.returncode == 0
    assert "s3cr3tpw" not in done.stdout and "alice" not in done.stdout
    assert re.search(r"https_proxy\s+http://\*\*\*@proxy\.example:3128\s+env HTTPS_PROXY", done.stdout), done.stdout
    assert re.search(r"no_proxy\s+internal\.example\s+env NO_PROXY", done.stdout)


@pytest.mark.slow
def test_a_socks_proxy_is_refused_with_a_message(work: Path):
    """Fixed (the client refuses a proxy it cannot use before any request; `uploader config` too).
    README: "An https:// proxy URL is spoken to over TLS …; other schemes (socks5://) are refused with a message."
    With HTTPS_PROXY=socks5://proxy:1080, `uploader run m.csv …` loads the manifest, then reports "cannot connect to
    the API for 32 s (… a proxy URL that is not http:// or https://HOST[:PORT] is not supported …) … run the same
    command again once the API is reachable", exit 1, after about 32 s; `uploader config` shows the proxy as
    fine. The product is wrong, I think: the scheme is known before any request, and the advice to wait for the
    API is wrong (the fix is the variable). Checked: refused within 10 s, or by `uploader config`."""
    write_images(work / "m.csv", 1)
    env = process_env(work, HTTPS_PROXY="socks5://proxy.example:1080", PLAYMENT_API_KEY="k")
    refused_by_config = up("config", "run", cwd=work, env=env).returncode != 0
    try:
        done = up("run", "m.csv", *LOAD, "--base-url", "https://api.example.com", cwd=work, env=env, timeout=10)
    except subprocess.TimeoutExpired:
        done = None
    assert done is not None and done.returncode in (1, 2) and "socks5" in done.stderr
    assert "once the API is reachable" not in done.stderr
    assert refused_by_config


@pytest.mark.slow
def test_sync_results_go_under_the_project_when_the_ledger_holds_several_and_watch_waits_for_final(work: Path):
    """README sync row: "with `--results`, download final jobs' results to `DIR/<reference_id>.json`
    (`DIR/<project_id>/<reference_id>.json` when the ledger tracks jobs of several projects …)"; "`--watch`: again
    every SECONDS (30) until every job is final"."""
    from uploader.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(complete_after_s=1.5)) as sandbox:
        env = api_env(work, sandbox)
        ran = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, "-q", cwd=work, env=env)
        assert ran.returncode == 3
        done = up("sync", "--results", "res", "--watch", "0.5", "--json", cwd=work, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["final"] == doc["tracked"] == 2 and doc["results"] == 2
    files = sorted(str(p.relative_to(work / "res")) for p in (work / "res").rglob("*.json"))
    assert files == ["demo/ovr-002.json", "proj-b/ovr-003.json"]
    rows = {r["reference_id"]: r for r in export_rows(work)}
    assert rows["ovr-003"]["result_path"] == str((work / "res" / "proj-b" / "ovr-003.json").resolve())
    assert rows["ovr-003"]["platform_status"] in ("completed", "rejected")


def test_forget_keeps_rows_whose_job_exists_unless_include_created_yes(work: Path, sent: dict[str, str]):
    """README forget row: "rows whose job exists or may exist … are kept unless `--include-created`, which says how
    many job_ids go with them and asks first (`--yes` without a terminal)"."""
    kept = up("forget", "--status", "succeeded", cwd=work)
    assert kept.returncode == 0 and len(export_rows(work, "--status", "succeeded")) == 2
    asked = subprocess.run(
        [sys.executable, "-m", "uploader", "forget", "--status", "succeeded", "--include-created"],
        cwd=work, env=process_env(work), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert asked.returncode != 0 and len(export_rows(work, "--status", "succeeded")) == 2
    done = up("forget", "--status", "succeeded", "--include-created", "--yes", cwd=work)
    assert done.returncode == 0 and "2" in done.stdout + done.stderr
    assert export_rows(work, "--status", "succeeded") == []
    assert [r["reference_id"] for r in export_rows(work)] == ["ovr-001"]


def _refused_run(work: Path, *extra: str, key: str | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
    """A run of 200 rows against a fresh sandbox with `extra` options (or a wrong key): (result, requests)."""
    from uploader.sandbox import Sandbox

    write_images(work / "m.csv", 200)
    with Sandbox() as sandbox:
        env = process_env(work, PLAYMENT_API_KEY=key or sandbox.api_key, PLAYMENT_BASE_URL=sandbox.base_url)
        done = up("run", "m.csv", *LOAD, *extra, cwd=work, env=env)
        return done, sandbox.stats()["requests_total"]


def test_the_same_permanent_error_on_the_first_rows_stops_the_run_and_the_rest_stay_pending(work: Path):
    """README "Pacing": "When the first rows' answers (20, or every row if fewer) are all the same permanent error,
    the run stops (exit 1) with the API's message and an example reference_id, and the rows not sent stay
    pending"."""
    done, requests = _refused_run(work, "--batch-id", str(uuid.uuid4()))
    assert done.returncode == 1, done.stderr
    assert "GE_0001" in done.stderr and "invalid parameter: batch_id" in done.stderr and "img-0" in done.stderr
    counts = json.loads(up("status", "--json", cwd=work).stdout)["counts"]
    assert counts["failed"] == requests < 200 and counts["pending"] == 200 - requests


def test_a_wrong_batch_id_costs_what_the_readme_says(work: Path):
    """Fixed (the README no longer promises a request or two for a wrong --batch-id: about 40).
    README "Pacing": "A run starts slowly: one request in the air, one more per answer (the window doubles per
    round trip) up to `--concurrency`, so a wrong key or a wrong `--batch-id` costs a request or two, not a full
    window." With a `--batch-id` the project does not have, 200 rows: the run stops (exit 1) only after 36-38
    requests, every one answered GE_0001, and those rows are now `failed` (the user must `retry` them). The early
    stop needs 20 identical answers (README, the next paragraph), and the window doubling per round trip has sent
    16 more by then, so the README's "a request or two" cannot hold for --batch-id; the wording is wrong (it holds
    for a wrong key, which fails at the batch creation)."""
    done, requests = _refused_run(work, "--batch-id", str(uuid.uuid4()))
    assert done.returncode == 1
    assert "a wrong key or a wrong `--batch-id` costs a request or two" not in README
    assert "wrong `--batch-id` is told by the first rows' answers, below (about 40 requests" in README
    assert requests <= 45


def test_a_wrong_key_costs_a_request_or_two_and_exits_1(work: Path):
    """README "Pacing": "a wrong key … costs a request or two"; exit code 1 "API key … refused"."""
    done, requests = _refused_run(work, key="not-the-key")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert requests <= 2
    assert json.loads(up("status", "--json", cwd=work).stdout)["counts"]["pending"] == 200


def test_a_wrong_key_does_not_suggest_forgetting_the_projects_rows(work: Path):
    """Fixed (auth-failure is no project's: cli/forgetting.py KEY_CODES).
    README forget row: "A run stopped by a project's rows (not found, or the key may not use it) names that
    project and suggests this". `uploader run sample_manifests/images_overrides.csv --project-id demo …` (rows of
    three projects) with a key that is simply wrong (`auth-failure API key incorrect`, the API's code for a bad
    key, docs/API.md: "stops the run") says "The run was stopped by a row of project 'demo' … If they do not belong
    to this upload, remove them with `uploader forget --project-id demo`". (With rows of one project it does not.)
    The advice points a user with a typo in the key at deleting rows of the upload from the ledger. The product is
    wrong: the hint belongs to resource_error / unauthorized, as the README says, not to a bad key."""
    from uploader.sandbox import Sandbox

    with Sandbox() as sandbox:
        env = process_env(work, PLAYMENT_API_KEY="not-the-key", PLAYMENT_BASE_URL=sandbox.base_url)
        done = up("run", str(SAMPLES / "images_overrides.csv"), *LOAD, cwd=work, env=env)
    assert done.returncode == 1
    assert "auth-failure" in done.stderr
    assert "uploader forget" not in done.stderr


def test_a_project_the_key_may_not_use_is_named_and_forget_is_suggested(work: Path):
    """README forget row: "A run stopped by a project's rows (not found, or the key may not use it) names that
    project and suggests this"."""
    from uploader.sandbox import Sandbox, SandboxConfig

    (work / "m.csv").write_text(
        "project_id,reference_id,image_url\n" + "".join(f"secret,s{i},https://e.com/{i}.jpg\n" for i in range(3))
    )
    with Sandbox(SandboxConfig(forbidden_projects=frozenset({"secret"}))) as sandbox:
        done = up("run", "m.csv", *LOAD, cwd=work, env=api_env(work, sandbox))
    assert done.returncode == 1
    assert "'secret'" in done.stderr and "uploader forget --project-id secret" in done.stderr


# --- the sandbox command ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sandbox_command_introspection_deletion_and_default_batch(work: Path):
    """README sandbox row: "`GET /_sandbox/stats` and `/_sandbox/jobs` show what it received; `DELETE
    /_sandbox/jobs/JOB_ID` deletes a job as the platform would (then GET job answers `FS_0006` and no listing shows
    it). The default batch of a project has the id `uuid5(NAMESPACE_URL, "sandbox-default-batch/<project_id>")`"."""
    import httpx

    port = free_port()
    proc = spawn("sandbox", "--port", str(port), "--api-key", "k1", cwd=work, env=process_env(work))
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/_sandbox/stats", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the sandbox ready")
        key = {"x-api-key": "k1"}
        body = {"reference_id": "a", "work_flow_id": "w", "data": {"image_url": "https://e.com/a.jpg"}}
        job_id = httpx.post(f"{url}/v1/projects/p/jobs", json=body, headers=key).json()["data"]["job_id"]
        job = httpx.get(f"{url}/v1/projects/p/jobs/{job_id}", headers=key).json()["data"]
        default = str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox-default-batch/p"))
        assert job["batch_id"] == default
        assert httpx.get(url + "/_sandbox/stats").json()["jobs_created"] == 1
        assert [j["job_id"] for j in httpx.get(url + "/_sandbox/jobs").json()["jobs"]] == [job_id]
        listing = httpx.get(f"{url}/v1/projects/p/batch/{default}", headers=key).json()["data"]["jobs"]
        assert [j["id"] for j in listing] == [job_id]
        assert httpx.delete(f"{url}/_sandbox/jobs/{job_id}").status_code == 200
        gone = httpx.get(f"{url}/v1/projects/p/jobs/{job_id}", headers=key).json()
        assert gone["success"] is False and gone["error"]["code"] == "FS_0006"
        assert httpx.get(f"{url}/v1/projects/p/batch/{default}", headers=key).json()["data"]["jobs"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err


# --- Python / notebooks -------------------------------------------------------------------------------------------


def test_the_library_example_upload_counts_to_pandas_and_resume(work: Path):
    """README "Python / notebooks": `uploader.upload(df, project_id=…, work_flow_id=…, ledger="jobs.db")` with the
    sandbox's base_url and api_key; `summary.counts` "rows per state in the whole ledger"; `uploader.Ledger.open(
    "jobs.db").to_pandas()` is "the export"; "calling it again resumes"; `run_options=uploader.RunOptions(
    concurrency=16, rate=50)`."""
    import pandas as pd

    import uploader

    df = pd.read_csv(SAMPLES / "images.csv", dtype=str)
    with uploader.Sandbox() as sandbox:
        summary = uploader.upload(
            df, project_id="demo", work_flow_id="wf-1", ledger="jobs.db", base_url=sandbox.base_url,
            api_key=sandbox.api_key, run_options=uploader.RunOptions(concurrency=16, rate=50),
        )  # fmt: skip
        assert summary.counts["succeeded"] == 12 and sorted(summary.counts) == sorted(state_table())
        again = uploader.upload(
            df, project_id="demo", work_flow_id="wf-1", ledger="jobs.db", base_url=sandbox.base_url,
            api_key=sandbox.api_key,
        )  # fmt: skip
        assert again.counts["succeeded"] == 12
        assert sandbox.stats()["requests_total"] == 12 + 1  # the jobs and one batch creation, nothing resent
    ledger = uploader.Ledger.open("jobs.db")
    try:
        jobs = ledger.to_pandas()
    finally:
        ledger.close()
    assert list(jobs.columns) == [*EXPORT_COLUMNS, "camera"]
    assert len(jobs[jobs.status != "succeeded"]) == 0
    assert str(jobs["platform_status_at"].dtype).startswith("datetime64") and "UTC" in str(
        jobs["platform_status_at"].dtype
    )


def test_the_library_refuses_a_bad_dataframe_naming_position_and_column(work: Path):
    """README: "one bad row raises `ManifestError` naming its position and column, and nothing is loaded";
    "`priority_weight` … one with gaps, which pandas makes float, is refused"; `UploaderError` is in
    `uploader.errors`."""
    import pandas as pd

    import uploader
    from uploader.errors import ManifestError, UploaderError

    bad = pd.DataFrame({"reference_id": ["a", "b"], "image_url": ["https://e.com/a.jpg", "not a url"]})
    with uploader.Sandbox() as sandbox:
        kw = {"project_id": "demo", "work_flow_id": "wf-1", "ledger": "jobs.db", "base_url": sandbox.base_url,
              "api_key": sandbox.api_key}  # fmt: skip
        with pytest.raises(ManifestError) as refused:
            uploader.upload(bad, **kw)
        assert "image_url" in str(refused.value) and re.search(r"\b(1|2|3)\b", str(refused.value))
        gaps = pd.DataFrame({"reference_id": ["a", "b"], "image_url": ["https://e.com/a.jpg"] * 2,
                             "priority_weight": [3, None]})  # fmt: skip
        with pytest.raises(ManifestError, match="priority_weight"):
            uploader.upload(gaps, **kw)
        assert issubclass(ManifestError, UploaderError)
        assert sandbox.stats()["requests_total"] == 0
    assert not Path("jobs.db").exists() or uploader.Ledger.open("jobs.db").to_pandas().empty


# --- scaling out --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_scale_out_two_runs_on_one_postgresql_ledger_create_each_job_once(db_url: str, work: Path):
    """README "Scaling out (PostgreSQL)": load once, then `uploader run --project-id P --work-flow-id W --batch-name
    N` "on every machine, as many as you like": two machines never send the same row; `uploader status` shows the
    counts. Here two processes on one machine, started together, with UPLOADER_LEDGER as the README exports it."""
    from sqlalchemy.engine import make_url

    from uploader.sandbox import Sandbox, SandboxConfig

    write_images(work / "m.csv", 300)
    with Sandbox(SandboxConfig(latency_ms=20)) as sandbox:
        env = {**api_env(work, sandbox), "UPLOADER_LEDGER": db_url}
        assert up("load", "m.csv", *LOAD, cwd=work, env=env).returncode == 0
        common = ["run", *LOAD, "--batch-name", "2026-11 upload", "--concurrency", "8"]
        runs = [spawn(*common, cwd=work, env=env), spawn(*common, "--ledger", db_url, cwd=work, env=env)]
        results = [proc.communicate(timeout=120) for proc in runs]
        assert [proc.returncode for proc in runs] == [0, 0], [err[-1500:] for _, err in results]
        # "a password in a ledger URL is printed as `PASSWORD`" in the follow-up the second run suggests
        url = make_url(db_url)
        shown = f"{url.username}:{url.password}@"  # the user and password as they would be printed
        assert all(shown not in out + err for out, err in results)
        assert f"{url.username}:PASSWORD@" in results[1][0] + results[1][1]
        stats = sandbox.stats()
        assert stats["jobs_total"] == 300 and stats["jobs_created_per_reference_id_max"] == 1
        assert stats["max_requests_per_reference_id"] == 1 and stats["batches_created"] == 1
    status = json.loads(up("status", "--json", cwd=work, env=env).stdout)
    assert status["counts"]["succeeded"] == 300 and status["total"] == 300
