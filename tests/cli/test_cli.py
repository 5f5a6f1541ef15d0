import json
import subprocess
import sys
from importlib.metadata import version

import pytest
from fanwise.cli import main
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors.registry import available


@action(reads=["n"], writes=["n"])
def count(state: State) -> State:
    return state.update(n=state["n"] + 1)


def run_tracked_app(storage_dir, project, app_id, partition_key=None):
    app = (
        ApplicationBuilder()
        .with_actions(count)
        .with_state(n=0)
        .with_entrypoint("count")
        .with_identifiers(app_id=app_id, partition_key=partition_key)
        .with_tracker(LocalTrackingClient(project, storage_dir=str(storage_dir)))
        .build()
    )
    app.run(halt_after=["count"])


def test_executors_lists_every_registered_name(capsys):
    assert main(["executors"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == available()
    assert {"threads", "async"} <= set(listed)


def test_version_prints_the_installed_distribution_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == version("fanwise")


def test_apps_lists_the_tracked_app_ids_of_a_project(tmp_path, capsys):
    run_tracked_app(tmp_path, "shop", "first")
    run_tracked_app(tmp_path, "shop", "second")
    run_tracked_app(tmp_path, "other-project", "elsewhere")

    assert main(["apps", "--project", "shop", "--storage-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ["first", "second"]


def test_apps_filters_by_partition_key(tmp_path, capsys):
    run_tracked_app(tmp_path, "shop", "no-key")
    run_tracked_app(tmp_path, "shop", "alice-cart", partition_key="alice")
    run_tracked_app(tmp_path, "shop", "bob-cart", partition_key="bob")

    args = ["apps", "--project", "shop", "--storage-dir", str(tmp_path)]
    assert main([*args, "--partition-key", "alice"]) == 0
    assert capsys.readouterr().out.split() == ["alice-cart"]
    assert main(args) == 0
    assert capsys.readouterr().out.split() == ["no-key"]


def test_apps_of_an_unknown_project_prints_nothing(tmp_path, capsys):
    assert main(["apps", "--project", "nothing-here", "--storage-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_apps_rejects_an_unsafe_project_name(tmp_path, capsys):
    assert main(["apps", "--project", "../escape", "--storage-dir", str(tmp_path)]) == 2
    assert "not a safe folder name" in capsys.readouterr().err


def test_apps_without_project_is_a_usage_error(capsys):
    assert main(["apps"]) == 2
    assert "--project" in capsys.readouterr().err


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "executors" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["apps", "--help"]])
def test_help_exits_zero(argv, capsys):
    assert main(argv) == 0
    assert "usage: fanwise" in capsys.readouterr().out


def test_apps_lists_the_readable_apps_and_names_the_unreadable_ones_on_stderr(tmp_path, capsys):
    run_tracked_app(tmp_path, "shop", "first")
    run_tracked_app(tmp_path, "shop", "broken")
    run_tracked_app(tmp_path, "shop", "second")
    broken = tmp_path / "shop" / "broken"
    (broken / "metadata.json").write_text("{not json")

    assert main(["apps", "--project", "shop", "--storage-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.split() == ["first", "second"]
    assert str(broken) in err and "Traceback" not in err


def test_apps_of_one_partition_key_ignore_another_keys_app_with_the_same_id(tmp_path, capsys):
    run_tracked_app(tmp_path, "shop", "cart", partition_key="alice")
    run_tracked_app(tmp_path, "shop", "cart", partition_key="bob")
    run_tracked_app(tmp_path, "shop", "wishlist", partition_key="bob")

    args = ["apps", "--project", "shop", "--storage-dir", str(tmp_path), "--partition-key"]
    assert main([*args, "alice"]) == 0
    assert capsys.readouterr().out.split() == ["cart"]
    assert main([*args, "bob"]) == 0
    assert capsys.readouterr().out.split() == ["cart", "wishlist"]


def test_apps_with_an_empty_partition_key_is_a_usage_error(tmp_path, capsys):
    args = ["apps", "--project", "shop", "--storage-dir", str(tmp_path), "--partition-key", ""]
    assert main(args) == 2
    assert "partition key ''" in capsys.readouterr().err


def test_apps_piped_into_a_reader_that_stops_early_exits_quietly(tmp_path):
    apps = tmp_path / "shop"
    for index in range(3000):  # more than a pipe buffer of ids
        folder = apps / f"app-{index:05d}-{'x' * 40}"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(
            json.dumps({"app_id": folder.name, "partition_key": None, "created_at": str(index)})
        )
    command = [sys.executable, "-m", "fanwise.cli.main", "apps", "--project", "shop",
               "--storage-dir", str(tmp_path)]

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        first = process.stdout.readline()
        process.stdout.close()  # like `| head -1`
        err = process.stderr.read().decode()
        code = process.wait(60)

    assert first.startswith(b"app-00000-")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 141  # 128 + SIGPIPE, as a shell reports a process that SIGPIPE ended


def test_apps_of_a_project_folder_that_cannot_be_read_names_it_without_a_traceback(
    tmp_path, capsys
):
    (tmp_path / "shop").write_text("a file where the project folder should be")

    assert main(["apps", "--project", "shop", "--storage-dir", str(tmp_path)]) == 1
    assert str(tmp_path / "shop") in capsys.readouterr().err
