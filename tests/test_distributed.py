"""torchrun sharded evaluation: 2 processes (gloo, CPU) give the tables of 1 process; a dead rank resumes."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli

ARGS = ["corrupt", "--model", "convnext-nano", "--random-init", "--data", "digits", "--per-class", "5",
        "--corruptions", "gaussian_blur,invert,salt", "--severities", "1,3", "--save-predictions", "--batch-size", "8",
        "--workers", "0", "--no-progress", "--device", "cpu"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def _torchrun(out, env=None):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_port()), "-m", "mamba_bench", *ARGS,
                           "--out", str(out)], capture_output=True, text=True, timeout=600, env={**ENV, **(env or {})},
                          cwd=ROOT)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    res = run_cli(*ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def _two_nodes(out0, out1):
    """Two torchrun launchers as two nodes (both local rank 0); each node's --out as given."""
    port = str(_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(k),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                               "-m", "mamba_bench", *ARGS, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
             for k, out in enumerate((out0, out1))]
    return [(n.communicate(timeout=600)[1], n.wait()) for n in nodes]


def test_two_nodes_match_one_process(tmp_path, one):
    """Multi-node: two torchrun launchers (one per "node", both local rank 0) sharing one --out."""
    results = _two_nodes(tmp_path / "nodes", tmp_path / "nodes")
    assert [rc for _, rc in results] == [0, 0], results[0][0][-2000:] + results[1][0][-2000:]
    for table in ("metrics", "summary", "predictions"):
        pd.testing.assert_frame_equal(pd.read_parquet(one / f"{table}.parquet"),
                                      pd.read_parquet(tmp_path / "nodes" / f"{table}.parquet"), check_exact=True)
    session = json.loads((tmp_path / "nodes" / "manifest.json").read_text())["sessions"][-1]
    assert session["shards_computed_per_rank"] == [6, 6]  # each node's process took its shard of every cell


def test_two_processes_match_one_and_a_dead_rank_resumes(tmp_path, one):
    tmp_path.joinpath("one").symlink_to(one)
    two = _torchrun(tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    for table in ("metrics", "summary", "predictions"):
        a = pd.read_parquet(tmp_path / "one" / f"{table}.parquet")
        b = pd.read_parquet(tmp_path / "two" / f"{table}.parquet")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    man = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert man["status"] == "complete" and man["execution"]["processes"] == 2
    assert not list((tmp_path / "two" / "parts").glob("shard-*"))  # merged shards are cleaned up
    # rank 1 dies after its second shard: the run fails, rank 1's finished shards stay on disk
    dead = _torchrun(tmp_path / "dead", env={"MAMBA_BENCH_TEST_DIE_AFTER": "1:2"})
    assert dead.returncode != 0
    kept = sorted((tmp_path / "dead" / "parts").glob("shard-*-r1of2.npz"))
    assert len(kept) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in kept}
    again = _torchrun(tmp_path / "dead")
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "metrics.parquet"),
                                  pd.read_parquet(tmp_path / "dead" / "metrics.parquet"), check_exact=True)
    assert json.loads((tmp_path / "dead" / "manifest.json").read_text())["status"] == "complete"
    # only the missing shards were computed: rank 1 did the 6 cells' shards minus the 2 it had written
    session = json.loads((tmp_path / "dead" / "manifest.json").read_text())["sessions"][-1]
    assert session["shards_computed_per_rank"][1] == 6 - 2
    assert stamps and not list((tmp_path / "dead" / "parts").glob("shard-*"))


def test_nodes_that_do_not_share_out_stop_before_any_work(tmp_path):
    """As if node 1's --out were a local disk: every rank stops with one clear line, nothing computed."""
    results = _two_nodes(tmp_path / "a", tmp_path / "b")
    assert all(rc != 0 for _, rc in results)
    for err, _ in results:
        assert "rank(s) 1 cannot see the manifest rank 0 wrote" in err and "every node sees" in err
    assert not list((tmp_path / "a").glob("parts/shard-*")) and not (tmp_path / "a" / "metrics.parquet").exists()


def test_resume_over_changed_data_is_refused_with_only_shards_on_disk(tmp_path):
    """Under torchrun an interrupted run holds shards, not finished cells: the data check must see them too."""
    from tests.test_corrupt_e2e import _write_image_folder

    data = tmp_path / "folder"
    _write_image_folder(data)
    args = ["corrupt", "--model", "convnext-nano", "--random-init", "--data", str(data), "--corruptions", "invert",
            "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "o")]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    dead = subprocess.run([*run, "--master-port", str(_port()), "-m", "mamba_bench", *args], capture_output=True,
                          text=True, timeout=600, env={**ENV, "MAMBA_BENCH_TEST_DIE_AFTER": "1:1"}, cwd=ROOT)
    assert dead.returncode != 0
    assert list((tmp_path / "o" / "parts").glob("shard-*")) and not list((tmp_path / "o" / "parts").glob("metrics-*"))
    good = data / "cat" / "ok0.jpg"
    (data / "dog" / "truncated.jpg").write_bytes(good.read_bytes())  # repaired: one more usable image
    again = subprocess.run([*run, "--master-port", str(_port()), "-m", "mamba_bench", *args], capture_output=True,
                           text=True, timeout=600, env=ENV, cwd=ROOT)
    assert again.returncode != 0
    assert "holds cells computed on other images (10 usable then, 11 now" in again.stderr
    assert not (tmp_path / "o" / "metrics.parquet").exists()
