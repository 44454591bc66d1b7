"""Adversarial tests of configuration, logs, secrets and the CLI's error UX (README "Configuration", "Exit
codes", the command table).

What tests/test_config.py, test_secrets.py, test_short_key.py and test_output.py do not already cover: config
files that are folders or not UTF-8, values of the wrong kind in a profile, what `uploader config` says about
what the command would refuse, `json = true` in a profile, `~` in a profile's paths, a log file in a missing
folder (flag, environment, profile), the log under concurrency, faults, appends and Ctrl-C, a key echoed back in
a redirect, a header, a unicode error body or an HTML page while `-vv` and `--log-file` are on, keys that cannot
be sent, every option of the README's command table in `--help`, and signals to `sync --watch`.

Real components: click's CliRunner over the real `cli` (as tests/test_config.py does) or a real `uploader`
process, the sandbox or a small loopback API (tests/test_adversary_config_logs_server.py), SQLite files in
tmp_path. Each test works in an empty folder with its own empty user config folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.reliability.harness import write_images
from tests.test_adversary_config_logs_server import KeyEchoingApi
from uploader.cli.commands import cli
from uploader.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parent.parent
#: A key with the characters of a base64 key, which JSON and URL encoders may escape.
KEY = "adv-SECRET-4f2a/Qz+8kL="
LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]


@pytest.fixture(autouse=True)
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and an empty user config folder; no UPLOADER_/PLAYMENT_ variable."""
    for name in list(os.environ):
        if name.startswith(("UPLOADER_", "PLAYMENT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def user_config_path() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "uploader" / "config.toml"


def process_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def spawn(args: list[str], cwd: Path, **extra_env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "uploader", *args],
        cwd=cwd,
        env=process_env(**extra_env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, seconds: float = 30.0) -> None:
    """Poll until `condition()` holds (a guard against a hung test, not a timed assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def json_lines(path: Path) -> list[dict]:
    """Every line of a --log-file, each parsed as JSON (any line that is not fails the test)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n") or not raw, raw[-200:]
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def key_leaks(data: str | bytes, key: str = KEY) -> list[str]:
    """Forms of `key` found in `data`: raw, JSON-escaped, URL-quoted, and its distinctive first part."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    from urllib.parse import quote

    forms = {key, key.replace("/", "\\/"), quote(key, safe=""), key.split("/")[0]}
    return [form for form in forms if form in text]


# --- config files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["project", "user"])
def test_a_config_file_that_is_a_folder_is_one_error_line_naming_it(where: str):
    path = Path("uploader.toml") if where == "project" else user_config_path()
    path.mkdir(parents=True)
    for extra in ([], ["--json"]):
        result = invoke("status", *extra)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        (line,) = result.stderr.strip().splitlines()
        assert str(path) in line and "Is a directory" in line
        if extra:
            assert json.loads(result.stdout) == {"error": json.loads(line)["error"], "exit": 1}


def test_a_config_file_that_is_not_utf8_is_named_with_line_and_column():
    """README: "A file that is not valid TOML, or an unknown key, is one error line naming the file (and line and
    column), exit 1." A Latin-1 `é` on line 2, column 15 (a file saved by an old editor)."""
    Path("uploader.toml").write_bytes(b'[default]\nledger = "caf\xe9.db"\n')
    result = invoke("status")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: uploader.toml:2:"), result.stderr


def test_a_wrongly_typed_profile_value_is_refused_naming_the_config_file(folder: Path):
    Path("uploader.toml").write_text('[default.run]\nconcurrency = "lots"\n')
    manifest = write_images(folder / "m.csv", 2)
    result = invoke("run", str(manifest), *LOAD, "--sandbox")
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    assert "lots" in result.stderr
    assert "uploader.toml" in result.stderr, result.stderr  # where the bad value is, so it can be fixed
    assert "env var" not in result.stderr, result.stderr  # no variable is set: do not send the user there
    assert not Path("uploader.db").exists()


@pytest.mark.parametrize(
    ("text", "made"),
    [
        pytest.param('[default]\nledger = ["a.db"]\n', "['a.db']", id="ledger-is-a-list"),
        pytest.param('[default]\nledger = "l.db"\n[default.run]\nconcurrency = 3.7\n', None, id="int-is-a-float"),
        pytest.param('[default]\nledger = "l.db"\n[default.run]\nconcurrency = true\n', None, id="int-is-a-bool"),
    ],
)
def test_a_profile_value_of_the_wrong_kind_is_refused_not_coerced(folder: Path, text: str, made: str | None):
    Path("uploader.toml").write_text(text)
    manifest = write_images(folder / "m.csv", 2)
    result = invoke("run", str(manifest), *LOAD, "--sandbox", "-q")
    assert result.exit_code in (1, 2), result.output
    assert "uploader.toml" in result.stderr and "Traceback" not in result.output
    if made is not None:
        assert not Path(made).exists()


@pytest.mark.parametrize(
    ("toml", "args", "shown"),
    [
        pytest.param('[default.run]\nconcurrency = "lots"\n', [], "lots", id="bad-profile-value"),
        pytest.param(None, ["--concurency", "4"], "--concurency", id="typo-in-an-option"),
    ],
)
def test_uploader_config_reports_what_the_command_would_refuse(toml: str | None, args: list[str], shown: str):
    """README: `uploader config [COMMAND] [OPTIONS]` shows what COMMAND would use and where each value comes from.
    The command itself refuses both (exit 2); `config`, the tool to find out why, should say so too."""
    if toml is not None:
        Path("uploader.toml").write_text(toml)
    assert invoke("run", *args, "--sandbox").exit_code in (1, 2)  # what the command does with it
    result = invoke("config", "run", *args)
    assert shown in result.output, result.output  # shown as the value, or named in an error


def test_json_from_a_profile_makes_usage_errors_json_as_the_flag_and_the_variable_do():
    """README: flag > environment > profile > default for every option; with --json "an error is then a JSON
    object on stderr and on stdout". UPLOADER_JSON=1 and --json do it for a usage error; a profile's
    `json = true` does it for an UploaderError but not for a usage error."""
    for env, toml in (({"UPLOADER_JSON": "1"}, None), ({}, "[default]\njson = true\n")):
        if toml:
            Path("uploader.toml").write_text(toml)
        assert json.loads(invoke("status", "--ledger", "nope.db", env=env).stdout)["exit"] == 1
        result = invoke("run", "--concurrency", "x", env=env)
        assert result.exit_code == 2
        assert json.loads(result.stdout)["exit"] == 2, (env, toml, result.output)


def test_a_tilde_in_a_profiles_log_file_is_the_home_folder_as_for_the_ledger(tmp_path: Path, folder: Path):
    home = tmp_path / "home"
    home.mkdir()
    manifest = write_images(folder / "m.csv", 2)
    Path("uploader.toml").write_text('[default]\nledger = "~/j.db"\n')
    assert invoke("load", str(manifest), *LOAD, env={"HOME": str(home)}).exit_code == 0
    assert (home / "j.db").exists()  # the ledger's `~` is the home folder
    Path("uploader.toml").write_text('[default]\nledger = "~/j.db"\nlog_file = "~/u.log"\n')
    result = invoke("status", env={"HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert (home / "u.log").exists() and not Path("~").exists()


def test_the_profile_flag_beats_the_profile_variable_and_the_environment_beats_the_profile():
    Path("uploader.toml").write_text(
        '[a]\nledger = "a.db"\n[b]\nledger = "b.db"\n[default]\nledger = "d.db"\nbase_url = "https://prof.example.com"\n'
    )

    def got(*args: str, env: dict[str, str] | None = None) -> dict:
        result = invoke("config", "run", *args, "--json", env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    doc = got("--profile", "b", env={"UPLOADER_PROFILE": "a"})
    assert doc["profile"] == "b" and doc["settings"]["ledger"] == {"value": "b.db", "source": "uploader.toml:b"}
    doc = got(env={"UPLOADER_PROFILE": "a"})
    assert doc["settings"]["ledger"] == {"value": "a.db", "source": "uploader.toml:a"}
    doc = got(env={"PLAYMENT_BASE_URL": "https://env.example.com"})
    assert doc["settings"]["base_url"] == {"value": "https://env.example.com", "source": "env PLAYMENT_BASE_URL"}
    doc = got("--base-url", "https://flag.example.com", env={"UPLOADER_BASE_URL": "https://env.example.com"})
    assert doc["settings"]["base_url"] == {"value": "https://flag.example.com", "source": "flag"}
    # and the command really uses what config shows: the profile picked by the variable
    assert invoke("load", str(write_images(Path("m.csv"), 1)), *LOAD, env={"UPLOADER_PROFILE": "a"}).exit_code == 0
    assert Path("a.db").exists() and not Path("d.db").exists()


# --- the log file --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "profile"])
def test_a_log_file_in_a_missing_folder_is_one_line_before_anything_is_opened_or_sent(folder: Path, how: str):
    manifest = write_images(folder / "m.csv", 3)
    log = folder / "nodir" / "run.log"
    args, env = [], {"PLAYMENT_API_KEY": KEY}
    if how == "flag":
        args = ["--log-file", str(log)]
    elif how == "env":
        env["UPLOADER_LOG_FILE"] = str(log)
    else:
        Path("uploader.toml").write_text(f'[default]\nlog_file = "{log}"\n')
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        result = invoke("run", str(manifest), *LOAD, "--base-url", box.base_url, "--ledger", "l.db", *args, env=env)
        assert box.stats()["requests_total"] == 0
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr == f"error: cannot open the log file {log}: No such file or directory\n"
    assert not Path("l.db").exists() and not log.parent.exists()


def test_the_log_file_appends_one_json_line_per_request_under_concurrency_and_faults(folder: Path):
    """Two runs (the second resumes what the first left failed) with 16 workers, server errors, HTML pages and
    dropped connections: the file keeps the first run's lines, every line is JSON, one per request the sandbox
    received, with retries as attempts above 1; never the key."""
    log = folder / "run.log"
    log.write_text('{"earlier": "line"}\n')
    manifest = write_images(folder / "m.csv", 150)
    config = SandboxConfig(api_key=KEY, error_rate=0.2, html_error_rate=0.1, drop_rate=0.1, seed=3)
    with Sandbox(config) as box:
        common = ["--ledger", "l.db", "--base-url", box.base_url, "--log-file", str(log), "--concurrency", "16"]
        first = invoke("run", str(manifest), *LOAD, *common, "--max-attempts", "2", "--timeout", "5", "-q",
                       env={"PLAYMENT_API_KEY": KEY})  # fmt: skip
        assert first.exit_code in (0, 3), first.output
        after_first = box.stats()["requests_total"]
        assert len(json_lines(log)) == 1 + after_first
        box.configure(error_rate=0.0, html_error_rate=0.0, drop_rate=0.0)
        assert invoke("retry", "--all", "--ledger", "l.db").exit_code == 0
        second = invoke("run", *common, "-q", env={"PLAYMENT_API_KEY": KEY})
        assert second.exit_code == 0, second.output
        requests = box.stats()["requests_total"]
    events = json_lines(log)
    assert events[0] == {"earlier": "line"}
    logged = [e for e in events[1:] if e.get("event") == "request"]
    assert len(events) - 1 == len(logged) == requests
    assert all({"time", "level", "endpoint", "http_status", "code", "latency_ms", "outcome"} <= set(e) for e in logged)
    jobs = [e for e in logged if e["endpoint"] == "create_job"]
    assert all(e["reference_id"].startswith("img-") and e["attempt"] >= 1 for e in jobs)
    assert any(e["attempt"] >= 2 for e in jobs)  # the retries have their own lines
    assert any(e["http_status"] is None for e in jobs)  # a dropped connection: a line with no status
    assert key_leaks(log.read_bytes()) == []


def test_ctrl_c_mid_run_leaves_a_log_of_whole_json_lines_one_per_request(folder: Path):
    """SIGINT to a real `uploader run -vv --log-file` process with requests in the air: exit 130, no traceback,
    the requests in the air finish and are logged, every line whole JSON."""
    log = folder / "run.log"
    manifest = write_images(folder / "m.csv", 400)
    with Sandbox(SandboxConfig(api_key=KEY, latency_ms=100)) as box:
        proc = spawn(
            ["run", str(manifest), *LOAD, "--ledger", "l.db", "--base-url", box.base_url, "--concurrency", "8",
             "--log-file", str(log), "-vv"],
            folder,
            PLAYMENT_API_KEY=KEY,
        )  # fmt: skip
        wait_for(lambda: box.stats()["requests_total"] >= 20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        requests = box.stats()["requests_total"]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "run the same command again" in err
    events = json_lines(log)
    assert len(events) == requests < 401
    assert key_leaks(out + err + log.read_text()) == []


# --- the key ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "code"),
    [("redirect", 1), ("headers", 3), ("unicode", 3), ("html", 3)],
)
def test_a_key_echoed_back_is_in_no_output_log_line_or_export(folder: Path, mode: str, code: int):
    """A server that gives the key back in a redirect's Location (path and query), in Retry-After and another
    header, in an error body with newlines, U+2028 and a lone surrogate, or in an HTML page: with `-vv` and
    `--log-file`, then `status`, `show`, `export`: the key is in no byte, every log line is JSON."""
    manifest = write_images(folder / "m.csv", 3)
    log = folder / "run.log"
    produced: list[bytes] = []
    with KeyEchoingApi(mode) as api:
        done = subprocess.run(
            [sys.executable, "-m", "uploader", "run", str(manifest), *LOAD, "--ledger", "l.db", "--base-url",
             api.base_url, "--log-file", str(log), "-vv", "--max-attempts", "2", "--max-retry-after", "1",
             "--default-batch"],
            cwd=folder, env=process_env(PLAYMENT_API_KEY=KEY), capture_output=True, timeout=120,
        )  # fmt: skip
        assert api.requests >= 1
    produced += [done.stdout, done.stderr]
    assert done.returncode == code, done.stderr[-2000:]
    assert b"Traceback" not in done.stderr and b"Logging error" not in done.stderr
    events = json_lines(log)
    assert len(events) == api.requests
    for args in (["status"], ["show", "img-00000"], ["export", "--format", "jsonl"], ["export"]):
        shown = invoke(*args, "--ledger", "l.db")
        assert shown.exit_code == 0, shown.output
        produced += [shown.stdout_bytes, shown.stderr_bytes]
    produced += [p.read_bytes() for p in folder.iterdir() if p.is_file()]
    assert [leak for data in produced for leak in key_leaks(data)] == []


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(KEY + "\n", id="newline-at-the-end"),
        pytest.param(KEY + "\r", id="cr-from-a-windows-file"),
        pytest.param(KEY[:8] + " " + KEY[8:], id="space"),
        pytest.param("\t" + KEY, id="tab"),
        pytest.param("ключ-" + KEY, id="non-ascii"),
        pytest.param(KEY + "\r\nX-Injected: 1", id="header-injection"),
    ],
)
def test_a_key_that_cannot_be_sent_in_a_header_is_refused_before_any_request(folder: Path, key: str):
    manifest = write_images(folder / "m.csv", 2)
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", "l.db", "--base-url", box.base_url, env={"PLAYMENT_API_KEY": key}
        )
        assert box.stats()["requests_total"] == 0
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: the API key is empty or has characters that cannot be sent in a header"
    ]
    assert key_leaks(result.output) == []
    assert not Path("l.db").exists()  # refused before the manifest was loaded into a new ledger


# --- help and exit codes ------------------------------------------------------------------------------------


def test_every_option_the_readme_names_for_a_command_is_in_its_help():
    """The README's command table (usage and the options it describes in backticks) and "Every command also
    takes --profile NAME, --json, -q, -v/-vv and --log-file PATH": each in `uploader COMMAND --help`."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("Every command also takes", 1)[0]
    seen = set()
    for line in table.splitlines():
        match = re.match(r"\| `uploader (\w+)([^`]*)` \|(.*)", line)
        if not match:
            continue
        name, usage, description = match.groups()
        seen.add(name)
        named = set(re.findall(r"--[a-z][a-z0-9-]*", usage)) | set(re.findall(r"`(--[a-z][a-z0-9-]*)", description))
        shown = invoke(name, "--help")
        assert shown.exit_code == 0 and "Traceback" not in shown.output
        offered = set(re.findall(r"--[a-z][a-z0-9-]*", shown.output))
        assert named - offered == set(), name
        assert {"--profile", "--json", "--quiet", "--verbose", "--log-file"} <= offered, name
        assert re.search(r"(^|\s)-q\b", shown.output) and re.search(r"(^|\s)-v\b", shown.output), name
    assert seen == set(cli.commands), seen ^ set(cli.commands)


@pytest.fixture
def watched(folder: Path):
    """A sandbox whose jobs never become final and a ledger with one job sent: `sync --watch` keeps waiting."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=3600)) as box:
        manifest = write_images(folder / "m.csv", 1)
        result = invoke("run", str(manifest), *LOAD, "--ledger", "l.db", "--base-url", box.base_url, "-q",
                        env={"PLAYMENT_API_KEY": KEY})  # fmt: skip
        assert result.exit_code == 0, result.output
        yield box


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        pytest.param(signal.SIGINT, 130, id="SIGINT"),
        pytest.param(
            signal.SIGTERM,
            143,
            id="SIGTERM",
        ),
    ],
)
def test_a_signal_stops_sync_watch_with_its_exit_code_and_no_traceback(folder: Path, watched: Sandbox, sig, code):
    """README exit codes: 130 interrupted (Ctrl-C), 143 stopped by SIGTERM; "run the same command again"."""
    before = watched.stats()["requests_total"]
    proc = spawn(["sync", "--watch", "30", "--ledger", "l.db", "--base-url", watched.base_url], folder,
                 PLAYMENT_API_KEY=KEY)  # fmt: skip
    wait_for(lambda: watched.stats()["requests_total"] > before)  # its first round was asked for
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "run the same command again" in err


def test_ctrl_c_on_a_terminal_leaves_the_bar_whole_and_every_line_readable(folder: Path):
    """A real `uploader run -v` on a pseudo-terminal (100 columns), the bar drawn, server errors logged above it,
    then SIGINT: exit 130, no traceback; every -v line and the closing messages start a line of their own (none
    glued to a fragment of the bar)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    manifest = write_images(folder / "m.csv", 600)
    with Sandbox(SandboxConfig(api_key=KEY, latency_ms=50, error_rate=0.2, seed=9)) as box:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, "-m", "uploader", "run", str(manifest), *LOAD, "--ledger", "l.db", "--base-url",
             box.base_url, "--concurrency", "4", "-v"],
            cwd=folder, env=process_env(PLAYMENT_API_KEY=KEY), stdin=follower, stdout=follower, stderr=follower,
        )  # fmt: skip
        os.close(follower)
        screen = bytearray()

        def read_some() -> bool:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the process is gone and the terminal closed
                    return False
                screen.extend(data)
                return bool(data)
            return proc.poll() is None

        wait_for(lambda: (read_some() or True) and box.stats()["requests_total"] >= 40 and b"%|" in screen)
        proc.send_signal(signal.SIGINT)
        while read_some():
            pass
        proc.wait(timeout=60)
        os.close(leader)
    text = screen.decode("utf-8", "replace")
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text and "%|" in text and "HTTP 500" in text
    shown = [
        line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")
    ]  # what each terminal line ends up showing
    assert sum(line.startswith("INFO uploader.send: ") for line in shown) >= 1
    for line in shown:
        if "uploader.send" in line:
            assert line.startswith("INFO uploader.send: "), line
        if "interrupted" in line:
            assert line.startswith("interrupted"), line
    assert any(line.startswith("interrupted: ") and "run the same command again" in line for line in shown)
