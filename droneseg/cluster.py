"""Where this process runs: alone, under ``torchrun``, in a SLURM job or in an OAR job. The one module that reads a
launcher's or scheduler's environment; training, prediction and the run folder ask it, never ``os.environ``.

Contract
--------
* :func:`detect` -> :class:`ClusterEnv`: the scheduler (``slurm``, ``oar`` or none), the launcher (``torchrun``,
  ``srun``, or Lightning's own), this process's rank, the job id that names the run folder, the requeue signal.
* SLURM: Lightning's ``SLURMEnvironment`` reads ``SLURM_*`` (``srun`` starts one task per device); requeue on
  ``SIGUSR1`` (``sbatch --signal=SIGUSR1@90``): save ``last.ckpt`` at a step boundary, ``scontrol requeue``.
* OAR: Lightning has no OAR environment. The job script starts one ``droneseg`` per node (``oarsh``); each finds its
  node rank in ``$OAR_NODEFILE`` (one line per reserved core or GPU: de-duplicated, in file order) and
  :func:`prepare` sets ``MASTER_ADDR`` (the first node), ``MASTER_PORT`` (from the job id, so every node agrees)
  and ``NODE_RANK`` for Lightning's general cluster mode, which then starts one process per device. Requeue on
  ``SIGUSR2`` (``oarsub --checkpoint S``): save, exit 99, which ``-t idempotent`` resubmits.
* ``torchrun`` (alone or inside a job): ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; it sets ``OMP_NUM_THREADS=1``, so
  :func:`cpu_threads` gives each process its share of the cores back.
* ``DRONESEG_REQUEUE_SIGNAL`` (a name such as ``SIGUSR2``, or ``none``) overrides the scheduler's signal.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from droneseg.classes import DataError

REQUEUE_SIGNAL_ENV = "DRONESEG_REQUEUE_SIGNAL"
OAR_REQUEUE_EXIT = 99
"""The exit code with which an OAR job of type ``idempotent`` is resubmitted."""

Scheduler = Literal["slurm", "oar"]


@dataclass(frozen=True)
class ClusterEnv:
    """What the environment says about this process; ``world_size`` is 1 until a launcher says otherwise (under
    Lightning's own launcher the extra processes it starts know their rank from ``LOCAL_RANK``/``NODE_RANK``)."""

    scheduler: Scheduler | None
    launcher: Literal["torchrun", "srun", "lightning"]
    job_id: str | None
    rank: int
    local_rank: int
    world_size: int
    nodes: tuple[str, ...] = ()
    node_rank: int = 0
    requeue_signal: signal.Signals | None = None
    batch: bool = False  # a scheduler's batch job (not an interactive allocation)

    @property
    def requeue_exit(self) -> int | None:
        """Exit code after saving on the requeue signal: OAR resubmits on 99; SLURM requeues by command."""
        return OAR_REQUEUE_EXIT if self.scheduler == "oar" else None

    @property
    def names_run(self) -> bool:
        """Whether the run folder is named from the job id, the same on every rank and node and after a requeue:
        under torchrun or srun, in a SLURM batch job, in a multi-node OAR job (an OAR job resubmitted on exit 99
        has a new id: its script passes ``--run-dir``). An interactive allocation gets dated folders."""
        if self.job_id is None:
            return False
        return self.launcher in ("torchrun", "srun") or (self.scheduler == "slurm" and self.batch) or len(self.nodes) > 1


def _int(environ: Mapping[str, str], *names: str, default: int = 0) -> int:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise DataError(f"${name}={value!r} is not an integer") from None
    return default


def oar_nodes(nodefile: Path) -> tuple[str, ...]:
    """Host names of an OAR node file, de-duplicated in file order (OAR writes one line per core or GPU).

    Raises DataError naming the file if it cannot be read or names no host.
    """
    try:
        lines = Path(nodefile).read_text(encoding="utf-8").split()
    except OSError as exc:
        raise DataError(f"{nodefile}: cannot read the OAR node file ({exc.strerror or exc})") from None
    nodes = tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not nodes:
        raise DataError(f"{nodefile}: the OAR node file names no host")
    return nodes


def _requeue_signal(environ: Mapping[str, str], scheduler: Scheduler | None) -> signal.Signals | None:
    name = environ.get(REQUEUE_SIGNAL_ENV)
    if name is None:
        return {"slurm": signal.SIGUSR1, "oar": signal.SIGUSR2}.get(scheduler or "")
    if name.lower() == "none":
        return None
    key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    try:
        return signal.Signals[key]
    except KeyError:
        raise DataError(f"${REQUEUE_SIGNAL_ENV}={name!r} is not a signal name such as SIGUSR1") from None


def _job_id(environ: Mapping[str, str]) -> str | None:
    # torchrun's --rdzv-id (default "none") names a bare torchrun job; a scheduler's id wins inside a job
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "OAR_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = environ.get(var)
        if value not in (None, "", "none"):
            if var == "SLURM_ARRAY_JOB_ID":
                return f"{value}_{environ.get('SLURM_ARRAY_TASK_ID', '0')}"
            return value
    return None


def detect(environ: Mapping[str, str] | None = None, hostname: str | None = None) -> ClusterEnv:
    """This process's place in a job, from ``environ`` (default ``os.environ``).

    Raises DataError for an environment that names this host nowhere (OAR) or holds a malformed number.
    """
    env = os.environ if environ is None else environ
    scheduler: Scheduler | None = "slurm" if "SLURM_JOB_ID" in env else "oar" if "OAR_JOB_ID" in env else None
    job_id = _job_id(env)
    sig = _requeue_signal(env, scheduler)
    # an interactive SLURM allocation by Lightning's rule; OAR's batch/interactive flag is not in the environment,
    # and an OAR job names its run only when multi-node (names_run)
    batch = scheduler == "oar" or (scheduler == "slurm" and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"))
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env):
        return ClusterEnv(scheduler, "torchrun", job_id, _int(env, "RANK"), _int(env, "LOCAL_RANK"),
                          _int(env, "WORLD_SIZE", default=1), node_rank=_int(env, "GROUP_RANK", "NODE_RANK"),
                          requeue_signal=sig, batch=batch)
    if scheduler == "slurm" and "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return ClusterEnv(scheduler, "srun", job_id, _int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID"),
                          _int(env, "SLURM_NTASKS", default=1), node_rank=_int(env, "SLURM_NODEID"),
                          requeue_signal=sig, batch=batch)
    nodes: tuple[str, ...] = ()
    node_rank = _int(env, "NODE_RANK")
    if scheduler == "oar" and env.get("OAR_NODEFILE"):
        nodes = oar_nodes(Path(env["OAR_NODEFILE"]))
        if "NODE_RANK" not in env:
            host = hostname or socket.gethostname()
            short = {h.split(".")[0]: i for i, h in enumerate(nodes)}
            if host in nodes:
                node_rank = nodes.index(host)
            elif host.split(".")[0] in short:
                node_rank = short[host.split(".")[0]]
            elif len(nodes) == 1:
                node_rank = 0  # a one-node job: whatever the host calls itself
            else:
                raise DataError(f"{env['OAR_NODEFILE']}: this host ({host}) is not among the job's nodes "
                                f"{', '.join(nodes)}; set NODE_RANK")
    local_rank = _int(env, "LOCAL_RANK")
    return ClusterEnv(scheduler, "lightning", job_id, _int(env, "RANK", default=local_rank), local_rank,
                      _int(env, "WORLD_SIZE", default=1), nodes, node_rank, sig, batch)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as Lightning's SLURM environment picks the root node.

    >>> first_host("gpu[07-10,12],cpu1"), first_host("node3,node4"), first_host("localhost")
    ('gpu07', 'node3', 'localhost')
    """
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" in head:
        prefix, ranges = head.split("[", 1)
        return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]
    return head


def master_port(job_id: str | None) -> int:
    """A rendezvous port every node of a job derives alike: 15000 + (the job id's digits mod 20000).

    >>> master_port("123456"), master_port(None)
    (18456, 15000)
    """
    digits = "".join(ch for ch in (job_id or "") if ch.isdigit())
    return 15000 + (int(digits) % 20000 if digits else 0)


def prepare(env: ClusterEnv, num_nodes: int) -> dict[str, str]:
    """Set what Lightning's general cluster mode reads on an OAR job started once per node; -> the variables set.

    Only for the ``lightning`` launcher in an OAR job; elsewhere the launcher or Lightning's own SLURM/torchrun
    environment has them. Raises DataError when ``num_nodes`` disagrees with the node file.
    """
    if env.scheduler != "oar" or env.launcher != "lightning" or not env.nodes:
        return {}
    if num_nodes > len(env.nodes):
        raise DataError(f"--num-nodes {num_nodes}, but the OAR job reserved {len(env.nodes)} node(s): "
                        f"{', '.join(env.nodes)}")
    values = {"MASTER_ADDR": env.nodes[0], "MASTER_PORT": str(master_port(env.job_id)),
              "NODE_RANK": str(env.node_rank)}
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    return added


def cpu_threads(env: ClusterEnv, cores: int | None = None, environ: Mapping[str, str] | None = None) -> int | None:
    """Torch threads for a CPU process under ``torchrun``, which sets ``OMP_NUM_THREADS=1`` unless told otherwise:
    the process's share of the node's cores (``train.threads`` still decides when given); None = torch's default.

    >>> e = ClusterEnv(None, "torchrun", "1", 0, 0, 2)
    >>> cpu_threads(e, cores=8, environ={"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"})
    4
    """
    environ = os.environ if environ is None else environ
    if env.launcher != "torchrun" or environ.get("OMP_NUM_THREADS") != "1":
        return None
    per_node = _int(environ, "LOCAL_WORLD_SIZE", default=1)
    return max(1, (cores or os.cpu_count() or 1) // max(1, per_node))


def job_ranks(env: ClusterEnv) -> tuple[int, int]:
    """(rank, world size) of a job whose launcher started each process itself (torchrun, also per node in an OAR
    job; srun), (0, 1) for a lone process. What ``predict`` shards its photos by."""
    if env.launcher in ("torchrun", "srun"):
        return env.rank, env.world_size
    return 0, 1


@contextmanager
def process_group(env: ClusterEnv) -> Iterator[tuple[int, int]]:
    """A gloo process group over :func:`job_ranks` for the life of the block (for gathering small results on the
    CPU), unless the job has one process; yields (rank, world size), those of the existing group if there is one.

    The rendezvous: torchrun's ``MASTER_ADDR``/``MASTER_PORT``; under srun the first node of the job and
    :func:`master_port` of its id.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # training's group (the final evaluation): use it
        yield dist.get_rank(), dist.get_world_size()
        return
    rank, world = job_ranks(env)
    if world == 1:
        yield rank, world
        return
    addr = os.environ.get("MASTER_ADDR") or first_host(os.environ.get("SLURM_NODELIST", "127.0.0.1"))
    port = os.environ.get("MASTER_PORT") or str(master_port(env.job_id))
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world)
    try:
        yield rank, world
    finally:
        dist.destroy_process_group()


def gather_objects(obj: object, world: int) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: object, world: int) -> object:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device_for(device: str | None, local_rank: int = 0) -> "torch.device":
    """``device`` as given, else this process's GPU (``cuda:<local rank>``, wrapping around the GPUs there are), else
    the CPU."""
    import torch

    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return torch.device("cpu")
