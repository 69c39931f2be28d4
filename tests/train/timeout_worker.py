"""One process of the timeout test: joins a group with a short timeout; rank 1 then freezes (SIGSTOP)."""

from __future__ import annotations

import os
import signal
import sys

import torch

from alignkit.train.distributed import all_reduce_flags, describe_timeout, init_distributed

env = init_distributed(torch.device("cpu"), timeout_s=float(sys.argv[1]))
all_reduce_flags([1.0], env)  # both processes are up
if env.rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
try:
    all_reduce_flags([1.0], env)
except RuntimeError as err:
    print(describe_timeout(err), flush=True)
    sys.exit(1)
