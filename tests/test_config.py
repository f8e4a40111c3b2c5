"""One settings model: flags > PIXFLEET_* > pixfleet.toml > defaults, shown with sources and
masked secrets; values checked at the edge; a read-only or full data dir is ``storage.*``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixfleet.config import load
from pixfleet.errors import ConfigError, ParamsInvalid, StorageError
from pixfleet.params import ThumbParams, from_pairs, parse
from pixfleet.storage import check_local_storage
from tests.harness.kafka import TANSU_MARK
from tests.helpers import images
from tests.helpers.cli import REPO

TOML = 'broker = "sqlite:///{home}/from-file.db"\nlog_level = "warning"\n'


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` in a clean environment: PATH plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# -- the model and its precedence ----------------------------------------------------------------


def test_flags_beat_env_beat_the_file_beat_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PIXFLEET_BROKER", "PIXFLEET_BLOBS", "PIXFLEET_LOG_LEVEL", "PIXFLEET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIXFLEET_HOME", str(tmp_path))
    (tmp_path / "pixfleet.toml").write_text(TOML.format(home=tmp_path))

    only_file = load()
    assert only_file.settings.broker_url == f"sqlite:///{tmp_path}/from-file.db"
    assert only_file.settings.blobs_url == (tmp_path / "blobs").as_uri()
    assert only_file.sources == {
        "home": "env PIXFLEET_HOME",
        "broker": f"file {tmp_path / 'pixfleet.toml'}",
        "blobs": "default",
        "log_level": f"file {tmp_path / 'pixfleet.toml'}",
    }
    monkeypatch.setenv("PIXFLEET_BROKER", "amqp://env-host/")
    monkeypatch.setenv("PIXFLEET_LOG_LEVEL", "DEBUG")
    env = load()
    assert (env.settings.broker, env.settings.log_level) == ("amqp://env-host/", "debug")
    assert env.sources["broker"] == "env PIXFLEET_BROKER"
    flag = load(broker="kafka://flag-host:9092", log_level=None)
    assert flag.settings.broker == "kafka://flag-host:9092"
    assert (flag.sources["broker"], flag.sources["log_level"]) == (
        "flag --broker",
        "env PIXFLEET_LOG_LEVEL",
    )


def test_bad_settings_are_refused_naming_their_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXFLEET_HOME", str(tmp_path))
    monkeypatch.delenv("PIXFLEET_CONFIG", raising=False)
    monkeypatch.setenv("PIXFLEET_LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match=r"log_level \(env PIXFLEET_LOG_LEVEL\): Input should be"):
        load()
    monkeypatch.delenv("PIXFLEET_LOG_LEVEL")
    (tmp_path / "pixfleet.toml").write_text('brokr = "amqp://typo/"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['brokr'\]"):
        load()
    (tmp_path / "pixfleet.toml").write_text("broker = \n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load()
    with pytest.raises(ConfigError, match="does not exist"):
        load(config=tmp_path / "missing.toml")


# -- the CLIs ------------------------------------------------------------------------------------


def test_config_show_gives_sources_and_masks_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "elsewhere.toml"
    conf.write_text('broker = "amqp://fleet:hunter2@rabbit:5672/v"\nlog_level = "error"\n')
    env = {"PIXFLEET_HOME": str(tmp_path), "PIXFLEET_BLOBS": "s3://b/p?region=x"}
    done = cli("producer", "--config", str(conf), "config", "show", "--json", env=env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["config_file"] == str(conf) and shown["config_file_found"] is True
    settings = shown["settings"]
    assert settings["broker"] == {
        "value": "amqp://fleet:***@rabbit:5672/v",
        "source": f"file {conf}",
    }
    assert settings["blobs"] == {"value": "s3://b/p?region=x", "source": "env PIXFLEET_BLOBS"}
    assert settings["log_level"]["value"] == "error"
    text = cli("producer", "--config", str(conf), "config", "show", env=env)
    assert "hunter2" not in done.stdout + text.stdout + text.stderr
    assert re.search(r"^broker\s+amqp://fleet:\*\*\*@rabbit:5672/v\s+\[file ", text.stdout, re.M)


def test_the_worker_reads_config_too(tmp_path: Path) -> None:
    conf = tmp_path / "w.toml"
    conf.write_text('broker = "redis://guest:hunter2@nowhere/"\n')
    env = {"PIXFLEET_HOME": str(tmp_path)}
    done = cli("consumers", "--config", str(conf), "run", "-g", "thumbs", "--burst", env=env)
    line = one_error_line(done)
    assert line.startswith("error[config.invalid_url]: unsupported broker URL 'redis://guest:***@")
    assert "hunter2" not in done.stderr


def test_log_level_accepts_only_four_levels(tmp_path: Path) -> None:
    env = {"PIXFLEET_HOME": str(tmp_path)}
    done = cli("consumers", "run", "-g", "thumbs", "--log-level", "verbose", env=env)
    assert done.returncode == 2
    line = one_error_line(done)
    assert line.startswith("error[config.invalid]: Invalid value for '--log-level'")
    assert line.endswith("(hint: python -m consumers run --help)")
    from_env = cli("consumers", "run", "-g", "thumbs", env={**env, "PIXFLEET_LOG_LEVEL": "loud"})
    assert from_env.returncode == 1
    assert one_error_line(from_env).startswith(
        "error[config.invalid]: log_level (env PIXFLEET_LOG_LEVEL): Input should be 'debug'"
    )


def test_version_and_completion(tmp_path: Path) -> None:
    env = {"PIXFLEET_HOME": str(tmp_path)}
    for side in ("producer", "consumers"):
        done = cli(side, "--version", env=env)
        assert re.fullmatch(r"pixfleet \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout
    completion = cli("producer", "--show-completion", "bash", env=env)
    assert completion.returncode == 0 and "complete " in completion.stdout
    assert "--install-completion" in cli("consumers", "--help", env=env).stdout


def test_no_color_is_respected(tmp_path: Path) -> None:
    colour = re.compile(r"\x1b\[[0-9;]*3[0-9](;[0-9]+)*m")  # a foreground colour
    env = {"PIXFLEET_HOME": str(tmp_path), "FORCE_COLOR": "1"}
    assert colour.search(cli("producer", "--help", env=env).stdout)
    plain = cli("producer", "--help", env={**env, "NO_COLOR": "1"})
    assert plain.returncode == 0 and "enqueue" in plain.stdout
    assert not colour.search(plain.stdout)


# -- storage errors ------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[Path]:
    """``mount *options target`` for the block (root only: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def test_a_read_only_home_is_a_storage_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    with mounted(home, "--bind", "-o", "ro", str(home)):
        # No PIXFLEET_HOME: the data dir would be created under the read-only $HOME.
        done = cli("producer", "status", env={"HOME": str(home)})
        assert done.returncode == 1
        line = one_error_line(done)
        assert line.startswith(
            f"error[storage.read_only]: {home}/.local/share/pixfleet is not writable: "
            "Read-only file system"
        )
        assert "broker." not in line
        data = home / "data"  # an existing, read-only data dir: the worker is refused too
        worker = cli(
            "consumers", "run", "-g", "thumbs", "--burst", env={"PIXFLEET_HOME": str(data)}
        )
        assert one_error_line(worker).startswith(f"error[storage.read_only]: {data}")


def test_a_full_data_dir_is_a_storage_error(tmp_path: Path) -> None:
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=128k", "tmpfs") as small:
        home = small / "pixfleet"
        home.mkdir()
        filler = open(small / "filler", "wb", buffering=0)  # noqa: SIM115 - closed below
        try:
            with pytest.raises(OSError, match="No space"):
                while True:
                    filler.write(b"\0" * 4096)
        finally:
            filler.close()
        done = cli("producer", "status", env={"PIXFLEET_HOME": str(home)})
        line = one_error_line(done)
        assert line.startswith(f"error[storage.full]: no space left on the file system of {home}")
        assert "(hint: point PIXFLEET_HOME" in line


def test_a_file_where_the_data_dir_should_be(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("not a directory")
    broker, blobs = f"sqlite:///{tmp_path}/home/broker.db", (tmp_path / "home" / "blobs").as_uri()
    with pytest.raises(StorageError, match=f"{tmp_path / 'home'} is not a directory") as caught:
        check_local_storage(broker, blobs)
    assert caught.value.code == "storage.error"
    check_local_storage("amqp://host/", "s3://bucket/prefix")  # nothing local: nothing checked


# -- Kafka: a broker without an idempotent producer ----------------------------------------------


def test_kafka_without_idempotence_says_how_to_turn_it_off(
    kafka_session_url: str, tmp_path: Path
) -> None:
    if not kafka_session_url.endswith(TANSU_MARK):
        pytest.skip("this Kafka broker has an idempotent producer")
    base = kafka_session_url.removesuffix(TANSU_MARK).split("?")[0]
    done = cli("producer", "status", "--broker", base, env={"PIXFLEET_HOME": str(tmp_path)})
    assert done.returncode == 1
    line = one_error_line(done)
    assert line.startswith(f"error[broker.error]: {base} refused the idempotent producer")
    assert line.endswith("needs ?idempotence=false in the URL")


# -- -p checked at the edge ----------------------------------------------------------------------


def test_params_are_checked_before_anything_is_published(tmp_path: Path) -> None:
    env = {"PIXFLEET_HOME": str(tmp_path)}
    [photo] = images.write_samples(tmp_path / "s", count=1)
    # A worker declares the pipeline its group runs (thumbs) when it starts.
    served = cli("consumers", "run", "-g", "thumbs", "--burst", "-c", "1", env=env)
    assert served.returncode == 0, served.stderr
    done = cli("producer", "enqueue", str(photo), "-g", "thumbs", "-p", "sizes=[8]", env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert one_error_line(done).startswith(
        "error[params.invalid]: thumbs params: sizes: sizes must be within 16..8192"
    )
    # A group no worker declared is its workers' business; nothing else was queued.
    queued = cli("producer", "enqueue", str(photo), "-g", "mine", "-p", "colour=red", env=env)
    assert queued.returncode == 0, queued.stderr
    status = cli("producer", "status", "--json", env=env)
    groups = {row["group"]: row["ready"] for row in map(json.loads, status.stdout.splitlines())}
    assert groups == {"mine": 1, "thumbs": 0}


def test_param_values_are_json_or_bare_words() -> None:
    assert from_pairs(["sizes=[128, 512]", "name=red", "q=80", 'x="a b"']) == {
        "sizes": [128, 512],
        "name": "red",
        "q": 80,
        "x": "a b",
    }
    with pytest.raises(ParamsInvalid, match=r"-p sizes: '\[128,512' is not valid JSON"):
        from_pairs(["sizes=[128,512"])
    with pytest.raises(ConfigError, match="expects KEY=VALUE"):
        from_pairs(["sizes"])
    with pytest.raises(ParamsInvalid, match="thumbs params: colour: Extra inputs are not"):
        parse(ThumbParams, {"colour": "red"}, "thumbs")
