"""Clusters on CPU: torchrun, a SLURM job and an OAR job simulated with their environment variables, 2 gloo
processes each; requeue on the walltime signal and resume; the environment parsing itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_TRAIN, run_cli
from safetensors.torch import load_file

from droneseg.classes import DataError
from droneseg.cluster import ClusterEnv, cpu_threads, detect, master_port, oar_nodes, prepare

# end-to-end runs in subprocesses: a hung one fails after 300 s with its traceback (pyproject: 120 s)
pytestmark = pytest.mark.timeout(300)

TINY = [*TINY_TRAIN, "--set", "data.samples_per_epoch=8", "--set", "train.accelerator=cpu",
        "--set", "train.patience=null"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "droneseg", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run: Path) -> list[dict]:
    import csv

    with (run / "logs" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's or scheduler's variables, plus ``extra``."""
    drop = ("SLURM_", "OAR_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
            "MASTER_", "DRONESEG_RUN_DIR", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _validate_one_process(run: Path, data: Path) -> dict:
    """The run's last checkpoint validated by one process (Lightning's validate): its pooled confusion matrix."""
    import lightning.pytorch as pl

    from droneseg.config import validate
    from droneseg.data.datamodule import DroneDataModule
    from droneseg.engine.task import SegmentationTask

    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw.pop("environment")
    cfg = validate(raw, "config.yaml")
    torch.set_num_threads(1)
    dm = DroneDataModule(cfg.data.model_copy(update={"root": str(data)}), seed=cfg.train.seed)
    task = SegmentationTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(task, datamodule=dm, verbose=False)
    return task.last_val


# -- the environment ---------------------------------------------------------------------------------------------

def test_detect_reads_each_launcher_and_scheduler(tmp_path):
    assert detect({}) == ClusterEnv(None, "lightning", None, 0, 0, 1)
    torchrun = detect({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "GROUP_RANK": "1",
                       "TORCHELASTIC_RUN_ID": "abc"})
    assert (torchrun.launcher, torchrun.rank, torchrun.world_size, torchrun.node_rank, torchrun.job_id) == \
        ("torchrun", 3, 4, 1, "abc")
    slurm = detect({"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "seg", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
                    "SLURM_NTASKS": "2"})
    assert (slurm.scheduler, slurm.launcher, slurm.rank, slurm.requeue_signal, slurm.names_run) == \
        ("slurm", "srun", 1, signal.SIGUSR1, True)
    assert slurm.requeue_exit is None
    # an interactive allocation: dated run folders, not the job's
    assert not detect({"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "bash"}).names_run
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1.cluster\nn1.cluster\nn2.cluster\nn2.cluster\n")
    oar = detect({"OAR_JOB_ID": "9", "OAR_NODEFILE": str(nodefile)}, hostname="n2")
    assert (oar.scheduler, oar.nodes, oar.node_rank, oar.requeue_signal, oar.requeue_exit, oar.names_run) == \
        ("oar", ("n1.cluster", "n2.cluster"), 1, signal.SIGUSR2, 99, True)
    assert detect({"OAR_JOB_ID": "9", "OAR_NODEFILE": str(nodefile), "DRONESEG_REQUEUE_SIGNAL": "USR1"},
                  hostname="n1").requeue_signal == signal.SIGUSR1


def test_environment_errors_name_the_variable_or_file(tmp_path):
    with pytest.raises(DataError, match=r"\$RANK='x' is not an integer"):
        detect({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn2\n")
    with pytest.raises(DataError, match=r"this host \(elsewhere\) is not among the job's nodes n1, n2"):
        detect({"OAR_JOB_ID": "9", "OAR_NODEFILE": str(nodefile)}, hostname="elsewhere")
    with pytest.raises(DataError, match="cannot read the OAR node file"):
        oar_nodes(tmp_path / "missing")
    with pytest.raises(DataError, match="not a signal name"):
        detect({"SLURM_JOB_ID": "1", "DRONESEG_REQUEUE_SIGNAL": "SIGNOPE"})


def test_oar_rendezvous_for_lightning(tmp_path, monkeypatch):
    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.setenv(var, "")  # recorded, so that what prepare() sets is undone after the test
        monkeypatch.delenv(var)
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")
    env = detect({"OAR_JOB_ID": "123456", "OAR_NODEFILE": str(nodefile)}, hostname="n2")
    assert prepare(env, num_nodes=2) == {"MASTER_ADDR": "n1", "MASTER_PORT": str(master_port("123456")),
                                         "NODE_RANK": "1"}
    assert os.environ["NODE_RANK"] == "1"
    with pytest.raises(DataError, match="--num-nodes 3, but the OAR job reserved 2 node"):
        prepare(env, num_nodes=3)


def test_torchrun_threads_get_their_share_of_the_cores():
    env = ClusterEnv(None, "torchrun", "j", 1, 1, 2)
    assert cpu_threads(env, cores=16, environ={"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "4"}) == 4
    assert cpu_threads(env, cores=16, environ={"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}) is None
    assert cpu_threads(ClusterEnv(None, "lightning", None, 0, 0, 1), cores=16, environ={"OMP_NUM_THREADS": "1"}) is None


def _in_process(capsys, monkeypatch, *argv: str) -> tuple[int, str, str]:
    """:func:`helpers.run_cli` without any launcher's or scheduler's variables: code, stdout, stderr (for
    single-process runs: it saves the seconds of a new interpreter importing torch and Lightning)."""
    for key in set(os.environ) - set(_clean_env()):
        monkeypatch.delenv(key)
    r = run_cli(capsys, *argv)
    return r.code, r.out, r.err


# -- torchrun ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_ranks_validate_each_image_once_as_one_process_would(synth_root, tmp_path, capsys, monkeypatch):
    """2 gloo ranks under torchrun: the val split sharded without padding, the pooled confusion matrix equal to one
    process validating the same checkpoint, the final evaluation sharded and equal to a one-process evaluate."""
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "droneseg", "train", "-c", "demo", "--data", str(synth_root), "--out", str(out),
                        *TINY, "--max-epochs", "2", "--devices", "2"],
                       capture_output=True, text=True, timeout=600, env=_clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = out.iterdir()  # one folder, named from the job id on both ranks
    assert run.name.startswith("demo-job")
    n_val = len((run / "splits" / "val.txt").read_text().split())
    assert [int(row["val_images"]) for row in _rows(run)] == [n_val, n_val]  # each val image once per epoch
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    logged = json.loads((run / "logs" / "val_confusion.json").read_text())["1"]
    single = _validate_one_process(run, synth_root)
    assert single["images"] == logged["images"] == n_val
    assert np.array_equal(np.array(single["confusion"]), np.array(logged["confusion"]))
    # the final evaluation: both ranks scored a shard; rank 0 wrote one folder; a one-process evaluate agrees
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["context"]["ranks"] == 2 and metrics["context"]["images"] == n_val
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["val"]
    code, _, err = _in_process(capsys, monkeypatch, "evaluate", str(run), "--data", str(synth_root), "--out",
                               str(tmp_path / "one"))
    assert code == 0, err[-2000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["miou"] == metrics["miou"] and one["pixel_accuracy"] == metrics["pixel_accuracy"]
    assert [c["support"] for c in one["per_class"]] == [c["support"] for c in metrics["per_class"]]
    # `droneseg evaluate` itself under torchrun: sharded over its own gloo group, the same numbers again
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "droneseg", "evaluate", str(run), "--data", str(synth_root), "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env=_clean_env())
    assert two.returncode == 0, two.stderr[-2000:]
    both = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert both["context"]["ranks"] == 2 and both["miou"] == one["miou"]


# -- requeue: SLURM and OAR --------------------------------------------------------------------------------------

def _wait_for_epochs(run_glob, n: int, procs: list[subprocess.Popen], timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(run_glob())
        if runs and (runs[0] / "logs" / "metrics.csv").exists() and len(_rows(runs[0])) >= n:
            return runs[0]
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"training ended early: {[p.poll() for p in procs]}")
        time.sleep(0.1)
    raise AssertionError(f"training never reached epoch {n}")


def _same_training(run: Path, ref: Path) -> None:
    """The resumed run trained what the uninterrupted one did: every epoch once, the same curve and weights."""
    rows, ref_rows = _rows(run), _rows(ref)
    assert [int(r["epoch"]) for r in rows] == [int(r["epoch"]) for r in ref_rows]
    for a, b in zip(rows, ref_rows):
        assert float(a["val_miou"]) == pytest.approx(float(b["val_miou"]), abs=1e-6)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-4)
    weights, ref_weights = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    for name, value in ref_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5)


EPOCHS = "6"


def _slurm_env(job: str, rank: int, port: int, bin_dir: Path, log: Path, restart: int = 0) -> dict[str, str]:
    return _clean_env(SLURM_JOB_ID=job, SLURM_JOB_NAME="droneseg-test", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2",
                      SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
                      SLURM_JOB_NUM_NODES="1", SLURM_NODELIST="localhost", SLURM_RESTART_COUNT=str(restart),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PATH=f"{bin_dir}:{os.environ['PATH']}",
                      SCONTROL_LOG=str(log), OMP_NUM_THREADS="1")


def _srun(job: str, cmd: list[str], bin_dir: Path, log: Path, restart: int = 0) -> list[subprocess.Popen]:
    """What ``srun`` does for one node with 2 tasks: 2 processes with the SLURM variables of each task."""
    port = _free_port()
    return [subprocess.Popen(cmd, env=_slurm_env(job, r, port, bin_dir, log, restart), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in (0, 1)]


def _finish(procs: list[subprocess.Popen]) -> list[int]:
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        codes.append(p.returncode)
        if p.returncode:
            print(err[-3000:])
    return codes


def _two_rank_training(data: Path, *where: str) -> list[str]:
    """The command of the two-rank training every requeue test compares with the uninterrupted one: ``where`` is
    ``--out DIR`` or ``--run-dir DIR``, and the final evaluation is left to the reference."""
    return _cli("train", "-c", "demo", "--data", str(data), *where, *TINY, "--max-epochs", EPOCHS, "--devices", "2")


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory) -> Path:
    """The uninterrupted two-rank training the requeued SLURM and OAR jobs must reproduce, trained once, as on a
    laptop: ``--devices 2`` and no scheduler (Lightning starts the second process), with its final evaluation.
    Every random draw is keyed by seed, epoch and position, so the launcher does not change what is trained."""
    out = tmp_path_factory.mktemp("uninterrupted")
    r = subprocess.run(_two_rank_training(synth_root, "--out", str(out)), capture_output=True, text=True,
                       timeout=600, env=_clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = out.iterdir()
    return run


@pytest.mark.slow
def test_two_cpu_processes_train_with_ddp_into_one_run_folder(uninterrupted):
    """``--devices 2`` on a machine without a scheduler: Lightning starts the second process itself (gloo); both
    ranks agree on one run folder (the fixture's output folder holds only it), rank 0 alone writes the log, and the
    final evaluation runs sharded over both."""
    summary = json.loads((uninterrupted / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == int(EPOCHS)
    assert [int(row["epoch"]) for row in _rows(uninterrupted)] == list(range(int(EPOCHS)))
    metrics = json.loads((uninterrupted / "eval" / "val" / "metrics.json").read_text())
    assert metrics["context"]["ranks"] == 2
    assert metrics["context"]["images"] == len((uninterrupted / "splits" / "val.txt").read_text().split())


@pytest.mark.slow
def test_slurm_requeue_saves_requeues_and_the_requeued_job_resumes(synth_root, tmp_path, uninterrupted):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    cmd = _two_rank_training(synth_root, "--out", str(tmp_path / "runs"), "--set", "train.final_eval=false")
    procs = _srun("4242", cmd, bin_dir, log)
    run = _wait_for_epochs(lambda: (tmp_path / "runs").glob("demo-job4242"), 2, procs)
    for p in procs:  # sbatch --signal=SIGUSR1@90 signals every task
        p.send_signal(signal.SIGUSR1)
    assert _finish(procs) == [0, 0]
    assert log.read_text().split("\n")[0] == "requeue 4242"  # rank 0 alone asked for the requeue
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "train_summary.json").exists()
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue checkpoint is off: one resume point
    stopped_at = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 0 < stopped_at < int(EPOCHS) * 2

    # the requeued job: the same script, the same job id
    assert _finish(_srun("4242", cmd, bin_dir, log, restart=1)) == [0, 0]
    assert json.loads((run / "train_summary.json").read_text())["epochs"] == int(EPOCHS)
    _same_training(run, uninterrupted)


@pytest.mark.slow
def test_oar_checkpoint_signal_exits_99_and_the_resubmitted_job_resumes(synth_root, tmp_path, uninterrupted):
    """OAR: one process per node (here one node, 2 devices: Lightning starts the second); SIGUSR2 reaches the job
    script's process only; the ranks agree, save and exit 99; the resubmitted job (a new id) resumes --run-dir."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\nlocalhost\n")  # one line per reserved core

    def job(job_id: str, run_dir: Path) -> subprocess.Popen:  # one process per node: Lightning starts the second
        env = _clean_env(OAR_JOB_ID=job_id, OAR_NODEFILE=str(nodefile), OAR_JOB_NAME="seg",
                         MASTER_PORT=str(_free_port()))
        return subprocess.Popen(_two_rank_training(synth_root, "--run-dir", str(run_dir), "--set",
                                                   "train.final_eval=false"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    run = tmp_path / "runs" / "seg"
    proc = job("11", run)
    _wait_for_epochs(lambda: [run] if run.is_dir() else [], 2, [proc])
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 99, err[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "train_summary.json").exists()
    assert _finish([job("12", run)]) == [0]  # idempotent resubmission: a new job id, the same --run-dir
    assert json.loads((run / "train_summary.json").read_text())["epochs"] == int(EPOCHS)
    _same_training(run, uninterrupted)


@pytest.mark.slow
def test_a_finished_run_is_extended_and_keeps_its_earlier_model(synth_root, tmp_path, capsys, monkeypatch):
    common = ["-c", "demo", "--data", str(synth_root), *TINY, "--set", "train.final_eval=false"]
    code, out, err = _in_process(capsys, monkeypatch, "train", *common, "--out", str(tmp_path), "--max-epochs", "2")
    assert code == 0, err[-2000:]
    run = Path(out.strip().splitlines()[-1])
    before = (run / "model.safetensors").read_bytes()
    code, _, err = _in_process(capsys, monkeypatch, "train", "--resume", str(run), "--max-epochs", "3")
    assert code == 0, err[-2000:]
    assert [int(row["epoch"]) for row in _rows(run)] == [0, 1, 2]
    assert json.loads((run / "train_summary.json").read_text())["epochs"] == 3
    assert (run / "previous" / "1" / "model.safetensors").read_bytes() == before
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_epochs"] == 3
    code, _, err = _in_process(capsys, monkeypatch, "train", "--resume", str(run), "--set", "train.lr=1")
    assert code == 2 and "only --max-epochs and --max-time" in err


# -- prediction at survey scale ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_rank_predict_writes_each_photo_once_and_one_class_area_table(tmp_path, capsys, monkeypatch):
    from helpers import save_tiny_model, scene
    from PIL import Image

    model = save_tiny_model(tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):  # an odd count: the shards differ by one photo
        Image.fromarray(scene(120, 80, seed=i)).save(photos / f"p{i}.png")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "droneseg", "predict", str(model), str(photos), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env=_clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("photos segmented") == 1 and "5 photos segmented" in r.stdout  # rank 0 speaks for all
    ranks = json.loads((tmp_path / "out" / "predict_ranks.json").read_text())["photos"]
    done = [Path(p).name for part in ranks.values() for p in part]
    assert sorted(done) == [f"p{i}.png" for i in range(5)] and len(ranks) == 2 and all(ranks.values())
    for i in range(5):
        for suffix in (".png", "_color.png", "_overlay.jpg"):
            assert (tmp_path / "out" / f"p{i}{suffix}").is_file()
    code, _, err = _in_process(capsys, monkeypatch, "predict", str(model), str(photos), "--out", str(tmp_path / "one"))
    assert code == 0, err[-2000:]
    # one table for the whole list, in its order, equal to what one process writes
    assert (tmp_path / "out" / "class_areas.csv").read_text() == (tmp_path / "one" / "class_areas.csv").read_text()
    assert not (tmp_path / "one" / "predict_ranks.json").exists()


# -- the templates -----------------------------------------------------------------------------------------------

TEMPLATES = Path(__file__).resolve().parents[1] / "scripts" / "cluster"


@pytest.mark.parametrize("name", ["slurm.sbatch", "oar.sh"])
def test_templates_pass_bash_and_shellcheck(name):
    import shutil

    assert subprocess.run(["bash", "-n", str(TEMPLATES / name)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make test installs it where it may)")
    r = subprocess.run(["shellcheck", str(TEMPLATES / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _template_env(tmp_path: Path, synth_root: Path, **extra: str) -> dict[str, str]:
    return _clean_env(DATA=str(synth_root), CONFIG="demo", VENV=str(Path(sys.executable).parents[1]),
                      TMPDIR=str(tmp_path / "local"), **extra)


@pytest.mark.slow
def test_the_sbatch_template_trains_under_srun(synth_root, tmp_path):
    """The template as sbatch runs it, with a stand-in ``srun`` that starts the job's tasks on this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\npids=()\nfor r in $(seq 0 $((SLURM_NTASKS - 1))); do\n'
                                  '  SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NODEID=0 "$@" & pids+=($!)\ndone\n'
                                  'code=0\nfor p in "${pids[@]}"; do wait "$p" || code=$?; done\nexit $code\n')
    (bin_dir / "srun").chmod(0o755)
    env = _template_env(tmp_path, synth_root, SLURM_JOB_ID="5151", SLURM_JOB_NAME="droneseg", SLURM_NNODES="1",
                        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NODELIST="localhost",
                        SLURM_NODELIST="localhost", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                        OUT=str(tmp_path / "runs"), PATH=f"{bin_dir}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", str(TEMPLATES / "slurm.sbatch"), *TINY, "--max-epochs", "1",
                        "--set", "train.final_eval=false"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "demo-job5151" / "train_summary.json").read_text())
    assert summary["world_size"] == 2


@pytest.mark.slow
def test_the_oar_template_forwards_the_checkpoint_signal_and_exits_99(synth_root, tmp_path):
    """The OAR script on one node (2 cores reserved: 2 devices); SIGUSR2 to the script, as OAR sends it."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\nlocalhost\n")
    env = _template_env(tmp_path, synth_root, OAR_JOB_ID="31", OAR_JOB_NAME="seg", OAR_NODEFILE=str(nodefile),
                        RUN_DIR=str(tmp_path / "runs" / "seg"))
    cmd = ["bash", str(TEMPLATES / "oar.sh"), *TINY, "--max-epochs", "50", "--set", "train.final_eval=false"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    run = tmp_path / "runs" / "seg"
    _wait_for_epochs(lambda: [run] if run.is_dir() else [], 1, [proc])
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 99, err[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "train_summary.json").exists()


def test_resume_takes_the_checkpoint_with_the_most_steps(tmp_path):
    """One rule between the run's last.ckpt and a Lightning requeue checkpoint: the most optimiser steps wins,
    a tie goes to last.ckpt; none is an answer too."""
    from droneseg.engine.requeue import resume_checkpoint

    (tmp_path / "checkpoints").mkdir()
    assert resume_checkpoint(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 40}, last)
    torch.save({"global_step": 30}, tmp_path / "hpc_ckpt_1.ckpt")
    assert resume_checkpoint(tmp_path) == last  # an older requeue checkpoint does not win
    torch.save({"global_step": 55}, tmp_path / "hpc_ckpt_2.ckpt")
    assert resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"  # nor lose when newer
    torch.save({"global_step": 55}, last)
    assert resume_checkpoint(tmp_path) == last
