"""Settings from outside the command line (issue 12, "Configuration and output"): config files with profiles,
an UPLOADER_ environment variable for every option, the API key from a file, `uploader config`, the request
log. Real commands through click's runner (or a real process where a signal or a pipe matters), each in an
empty folder with its own user config folder (XDG_CONFIG_HOME), so no file of the machine leaks in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.reliability.harness import write_images
from uploader.cli.commands import cli
from uploader.sandbox import Sandbox, SandboxConfig

KEY = "config-test-key-5f0e1b"
ROOT = Path(__file__).resolve().parent.parent
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


def settings(*args: str, env: dict[str, str] | None = None) -> dict:
    result = invoke("config", *args, "--json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["settings"]


def user_config(text: str) -> Path:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "uploader" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_flag_env_profile_default():
    Path("uploader.toml").write_text('[default]\nledger = "file.db"\n[default.run]\nconcurrency = 16\n')
    got = settings("run")
    assert got["ledger"] == {"value": "file.db", "source": "uploader.toml:default"}
    assert got["concurrency"] == {"value": 16, "source": "uploader.toml:default.run"}
    assert got["max_attempts"] == {"value": 8, "source": "default"}
    got = settings("run", env={"UPLOADER_LEDGER": "env.db", "UPLOADER_RUN_CONCURRENCY": "4"})
    assert got["ledger"] == {"value": "env.db", "source": "env UPLOADER_LEDGER"}
    assert got["concurrency"] == {"value": 4, "source": "env UPLOADER_RUN_CONCURRENCY"}
    got = settings("run", "--ledger", "flag.db", "--concurrency", "2", env={"UPLOADER_LEDGER": "env.db"})
    assert got["ledger"] == {"value": "flag.db", "source": "flag"}
    assert got["concurrency"] == {"value": 2, "source": "flag"}


def test_a_ledger_url_is_shown_without_its_password_a_ledger_file_as_named():
    url = "postgresql+psycopg://bob:s3cret-pw@db.example:5432/led?sslmode=require&password=qu3ry-pw"
    for args, env in ((("--ledger", url), None), ((), {"UPLOADER_LEDGER": url})):
        got = settings("run", *args, env=env)["ledger"]["value"]
        assert got == "postgresql+psycopg://***@db.example:5432/led?***"
        text = invoke("config", "run", *args, env=env).stdout
        assert "s3cret-pw" not in text and "qu3ry-pw" not in text and "db.example:5432/led" in text
    assert settings("run", "--ledger", "odd?name#1.db")["ledger"]["value"] == "odd?name#1.db"


def test_a_profile_setting_is_used_by_the_command(folder: Path):
    """Not only shown: `load` and `status` really use the profile's ledger."""
    Path("uploader.toml").write_text(
        '[default]\nledger = "from-profile.db"\nproject_id = "proj"\nwork_flow_id = "wf"\n'
    )
    manifest = write_images(folder / "m.csv", 3)
    assert invoke("load", str(manifest)).exit_code == 0
    assert (folder / "from-profile.db").exists() and not (folder / "uploader.db").exists()
    status = json.loads(invoke("status", "--json").stdout)
    assert status["counts"]["pending"] == 3


def test_profiles_by_flag_and_environment_and_the_user_file():
    user = user_config('[default]\nledger = "user.db"\ntimeout = 5\n[prod]\nledger = "user-prod.db"\n')
    Path("uploader.toml").write_text('[prod]\nbase_url = "https://prod.example.com"\n')
    got = settings("run")
    assert got["ledger"] == {"value": "user.db", "source": f"{user}:default"}
    assert got["timeout"]["value"] == 5.0
    got = settings("run", "--profile", "prod")
    assert got["ledger"] == {"value": "user-prod.db", "source": f"{user}:prod"}
    assert got["base_url"] == {"value": "https://prod.example.com", "source": "uploader.toml:prod"}
    assert got["timeout"] == {"value": 30.0, "source": "default"}  # another profile's value does not apply
    got = settings("status", env={"UPLOADER_PROFILE": "prod"})
    assert got["ledger"]["value"] == "user-prod.db"
    # the project file wins over the user file for the same key
    Path("uploader.toml").write_text('[prod]\nledger = "project.db"\n')
    assert settings("run", "--profile", "prod")["ledger"] == {"value": "project.db", "source": "uploader.toml:prod"}


def test_the_file_ranks_before_the_table_it_sets_a_key_in():
    """./uploader.toml beats the user's file whether either sets a key at the profile's level or in the
    command's table; within one file the command's table wins; `uploader config` names the file it came from."""
    user = user_config('[default]\ntimeout = 1\nledger = "user.db"\n[default.run]\ntimeout = 5\nconcurrency = 3\n')
    Path("uploader.toml").write_text("[default]\ntimeout = 10\n")
    got = settings("run")
    assert got["timeout"] == {"value": 10.0, "source": "uploader.toml:default"}
    assert got["concurrency"] == {"value": 3, "source": f"{user}:default.run"}
    assert got["ledger"] == {"value": "user.db", "source": f"{user}:default"}
    assert settings("sync")["timeout"] == {"value": 10.0, "source": "uploader.toml:default"}
    Path("uploader.toml").write_text("[default]\ntimeout = 10\n[default.run]\ntimeout = 20\n")
    assert settings("run")["timeout"] == {"value": 20.0, "source": "uploader.toml:default.run"}
    assert settings("sync")["timeout"] == {"value": 10.0, "source": "uploader.toml:default"}
    Path("uploader.toml").write_text("[default.run]\ntimeout = 20\n")
    assert settings("run")["timeout"] == {"value": 20.0, "source": "uploader.toml:default.run"}
    assert settings("sync")["timeout"] == {"value": 1.0, "source": f"{user}:default"}


def test_unknown_profile_is_a_usage_error_listing_the_profiles():
    Path("uploader.toml").write_text("[default]\n[staging]\n")
    result = invoke("status", "--profile", "prd")
    assert result.exit_code == 2
    assert "no profile 'prd'" in result.stderr and "profiles: default, staging" in result.stderr


@pytest.mark.parametrize(
    "text, where",
    [
        ("[default]\nledger = \n", "uploader.toml:2:10: "),
        ('[default]\nledger = "a.db"\nledger = "b.db"\n', "uploader.toml:3:"),
        ("[default\n", "uploader.toml:1:"),
        ('[default]\nledger = "a', "uploader.toml:2:12: "),  # at the end: just after the last character
        ("[default]\r\nledger = [1,\r\n", "uploader.toml:3:1: "),
    ],
)
def test_a_bad_config_file_is_one_line_with_file_line_and_column(text: str, where: str):
    Path("uploader.toml").write_text(text)
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {where}") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output


def test_bad_settings_are_refused_with_the_file_and_the_key():
    Path("uploader.toml").write_text("[default]\nconcurency = 3\n")
    result = invoke("status")
    assert result.exit_code == 1 and "uploader.toml: [default] unknown setting 'concurency'" in result.stderr
    Path("uploader.toml").write_text("[default]\nconcurrency = 3\n")
    result = invoke("status")
    assert result.exit_code == 1 and "put it in a table [default.run]" in result.stderr
    Path("uploader.toml").write_text('[default]\napi_key = "secret-in-a-file"\n')
    result = invoke("status")
    assert result.exit_code == 1 and "api_key_file" in result.stderr
    assert "secret-in-a-file" not in result.output


def test_the_api_key_is_shown_as_set_or_unset_never_its_value():
    assert settings("run")["api_key"] == {"value": "unset", "source": "default"}
    got = settings("run", env={"PLAYMENT_API_KEY": KEY})
    assert got["api_key"] == {"value": "set", "source": "env PLAYMENT_API_KEY"}
    for args in (["run", "--api-key", KEY], ["run", "--api-key", KEY, "--json"], ["reconcile", "--api-key", KEY]):
        result = invoke("config", *args, env={"UPLOADER_API_KEY": KEY})
        assert result.exit_code == 0 and KEY not in result.output
        assert "api_key" in result.output and "set" in result.output


def test_every_option_reads_an_uploader_environment_variable():
    """Every option of every command names its variable (shown in --help); the filters of the commands that
    reset or remove rows are typed only (an exported variable must not pick rows to forget or retry)."""
    typed_only = {
        ("retry", "--error-code"),
        ("retry", "--all"),
        ("retry", "--blocked"),
        ("forget", "--project-id"),
        ("forget", "--status"),
        ("forget", "--reference-id-file"),
        ("forget", "--manifest"),
        ("forget", "--include-created"),
        ("forget", "--yes"),
    }
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        for param in cli.commands[name].params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            flag = max(param.opts, key=len)
            if (name, flag) in typed_only:
                assert not param.envvar, (name, flag)
                continue
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
            assert names and all(n.startswith("UPLOADER_") for n in names[:1]), (name, flag, names)
            assert param.show_envvar


def test_legacy_playment_variables_still_work():
    got = settings("run", env={"PLAYMENT_API_KEY": KEY, "PLAYMENT_BASE_URL": "https://old.example.com"})
    assert got["base_url"] == {"value": "https://old.example.com", "source": "env PLAYMENT_BASE_URL"}
    got = settings(
        "run", env={"UPLOADER_BASE_URL": "https://new.example.com", "PLAYMENT_BASE_URL": "https://old.example.com"}
    )
    assert got["base_url"]["value"] == "https://new.example.com"


def test_what_retry_and_forget_act_on_is_typed_only(tmp_path: Path):
    """A profile's project_id (meant for load and run) or an exported variable never picks rows to forget or
    retry."""
    ledger = tmp_path / "l.db"
    assert invoke("load", str(write_images(tmp_path / "m.csv", 2)), *LOAD, "--ledger", str(ledger)).exit_code == 0
    result = invoke("retry", "--ledger", str(ledger), env={"UPLOADER_ALL": "1", "UPLOADER_RETRY_ALL": "1"})
    assert result.exit_code == 2 and "--all" in result.stderr
    Path("uploader.toml").write_text(f'[default]\nledger = "{ledger}"\nproject_id = "proj"\n')
    result = invoke("forget", env={"UPLOADER_PROJECT_ID": "proj", "UPLOADER_FORGET_PROJECT_ID": "proj"})
    assert result.exit_code == 2 and "give at least one filter" in result.stderr
    assert json.loads(invoke("status", "--json").stdout)["total"] == 2
    Path("uploader.toml").write_text('[default.forget]\nproject_id = "proj"\n')
    result = invoke("status")
    assert result.exit_code == 1 and "[default.forget] unknown setting 'project_id'" in result.stderr
    Path("uploader.toml").write_text('[default.nope]\nledger = "x"\n')
    result = invoke("status")
    assert result.exit_code == 1 and "[default.nope] is no command's table" in result.stderr


def run_with(box: Sandbox, tmp_path: Path, *extra: str, env: dict[str, str] | None = None, rows: int = 5):
    manifest = write_images(tmp_path / "m.csv", rows)
    return invoke(
        "run", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--base-url", box.base_url, *extra, env=env
    )


def test_api_key_file_strips_one_newline_and_the_key_is_not_in_the_command_line(tmp_path: Path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        result = run_with(box, tmp_path, "--api-key-file", str(key_file))
        assert result.exit_code == 0, result.output
        assert box.stats()["jobs_created"] == 5
    key_file.write_text(KEY + "\n\n")  # only one newline is dropped: the other is refused before sending
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        again = tmp_path / "again"
        again.mkdir()
        result = run_with(box, again, env={"PLAYMENT_API_KEY_FILE": str(key_file)})
        assert result.exit_code == 2 and "API key" in result.stderr, result.output
        assert box.stats()["requests_total"] == 0


def test_api_key_file_from_a_profile_and_unreadable_files(tmp_path: Path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    Path("uploader.toml").write_text(f'[default]\napi_key_file = "{key_file}"\n')
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        assert run_with(box, tmp_path).exit_code == 0
        # the environment's key outranks the profile's key file
        result = run_with(box, tmp_path, env={"PLAYMENT_API_KEY": "wrong"}, rows=6)
        assert result.exit_code == 1 and "API key" in result.stderr
    Path("uploader.toml").unlink()
    missing = tmp_path / "nope"
    result = invoke("run", "--ledger", str(tmp_path / "l.db"), "--api-key-file", str(missing))
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot read the API key file {missing}: No such file or directory\n"
    result = invoke("run", "--ledger", str(tmp_path / "l.db"), "--api-key-file", str(tmp_path))  # a folder
    assert result.exit_code == 1 and "cannot read the API key file" in result.stderr
    result = invoke("run", "--ledger", str(tmp_path / "l.db"), "--api-key-file", str(key_file), "--api-key", "x")
    assert result.exit_code == 2 and "keep one" in result.stderr


def test_log_file_has_one_json_line_per_request_and_never_the_key(tmp_path: Path):
    log = tmp_path / "run.log"
    with Sandbox(SandboxConfig(api_key=KEY, error_rate=0.3, seed=5)) as box:
        result = run_with(box, tmp_path, "--log-file", str(log), "-v", env={"PLAYMENT_API_KEY": KEY}, rows=20)
        assert result.exit_code == 0, result.output
        requests = box.stats()["requests_total"]
    text = log.read_text()
    assert KEY not in text
    events = [json.loads(line) for line in text.splitlines()]
    logged = [e for e in events if e.get("event") == "request"]
    assert len(logged) == requests  # every request the sandbox received: the batch creation too
    assert [e["endpoint"] for e in logged].count("create_batch") == 1
    sent = [e for e in logged if e["endpoint"] == "create_job"]
    assert len(sent) == box.stats()["jobs_created"] + sum(1 for e in sent if e["outcome"] != "succeeded")
    assert {"time", "reference_id", "attempt", "http_status", "code", "latency_ms"} <= set(sent[0])
    assert {e["reference_id"] for e in sent if e["outcome"] == "succeeded"} == {f"img-{i:05d}" for i in range(20)}
    assert any(e["http_status"] == 500 and e["code"] and e["attempt"] >= 1 for e in sent)
    # -v shows the answers that were not a success on stderr, not the successes
    assert "HTTP 500" in result.stderr and "HTTP 200" not in result.stderr and KEY not in result.stderr


def _spawn(args: list[str], cwd: Path, **kw) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "uploader", *args], cwd=cwd, env={**env, **kw.pop("env", {})}, text=True, **kw
    )


def test_sigterm_exits_143_and_sigint_130(tmp_path: Path):
    """Seen: a run stopped by SIGTERM exited 130 like Ctrl-C; a shell and a supervisor expect 128 + 15."""
    with Sandbox(SandboxConfig(api_key=KEY, latency_ms=200)) as box:
        for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
            ledger = tmp_path / f"{sig.name}.db"
            manifest = write_images(tmp_path / "m.csv", 200)
            proc = _spawn(
                [
                    "run",
                    str(manifest),
                    *LOAD,
                    "--ledger",
                    str(ledger),
                    "--base-url",
                    box.base_url,
                    "--concurrency",
                    "2",
                    "-q",
                ],
                tmp_path,
                env={"PLAYMENT_API_KEY": KEY},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            deadline, before = time.monotonic() + 30, box.stats()["requests_total"]
            while box.stats()["requests_total"] < before + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == code, (sig, err)
            assert "Traceback" not in err and "run the same command again" in err


def test_export_into_a_closed_pipe_ends_quietly(tmp_path: Path):
    """Seen: `uploader export | head -1` exited 1. Now 141 (128 + SIGPIPE, as a shell reports a tool the
    pipe's reader left), no traceback, no error text."""
    ledger = tmp_path / "l.db"
    assert invoke("load", str(write_images(tmp_path / "m.csv", 20_000)), *LOAD, "--ledger", str(ledger)).exit_code == 0
    for extra in ([], ["--json"]):
        proc = _spawn(
            ["export", "--ledger", str(ledger), *extra], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=30) in (0, 141), err
        assert first and "Traceback" not in err and "rror" not in err, err


def test_the_proxies_are_shown_with_their_variable_and_no_credentials(monkeypatch: pytest.MonkeyPatch):
    """`uploader config run` shows the proxies the API's requests would go through (uploader.api.wire reads the
    same variables), a proxy URL's user and password masked; a command that sends nothing shows none."""
    for name in ("https_proxy", "http_proxy", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert settings("run")["https_proxy"] == {"value": None, "source": "default"}
    env = {"HTTPS_PROXY": "http://bob:s3cret@proxy.corp:3128", "https_proxy": "", "no_proxy": ".internal"}
    got = settings("run", env=env)
    assert got["https_proxy"] == {"value": "http://***@proxy.corp:3128", "source": "env HTTPS_PROXY"}
    assert got["no_proxy"] == {"value": ".internal", "source": "env no_proxy"}
    assert got["http_proxy"] == {"value": None, "source": "default"}
    shown = invoke("config", "run", env=env).output
    assert "proxy.corp:3128" in shown and "s3cret" not in shown and "bob" not in shown
    assert "https_proxy" not in settings("load", env=env)


@pytest.mark.parametrize(
    ("seconds", "text"), [(86400, "1d"), (604800, "7d"), (5400, "90m"), (90, "90s"), (3600, "1h"), (1.5, "1.5s")]
)
def test_a_duration_is_shown_as_it_would_be_written(seconds: float, text: str):
    import datetime as dt

    from uploader.cli.preflight import Duration, duration_text

    value = dt.timedelta(seconds=seconds)
    assert duration_text(value) == text
    assert Duration().convert(text, None, None) == value  # read back, it is the same length of time


def test_uploader_config_shows_durations_as_they_are_written():
    doc = json.loads(invoke("config", "run", "--recheck-after", "1.5h", "--json").stdout)["settings"]
    assert doc["url_ttl"]["value"] == "7d" and doc["min_url_validity"]["value"] == "1d"
    assert doc["recheck_after"] == {"value": "90m", "source": "flag"}
    assert " 7d " in invoke("config", "run").stdout


def test_a_config_file_that_is_a_dangling_link_is_an_error_not_ignored(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("uploader.toml").symlink_to(tmp_path / "gone.toml")
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stderr == f"error: uploader.toml: a link to {tmp_path / 'gone.toml'}, which does not exist\n"
