"""Format benchmarks (``benchmarks/``): honest numbers, near the machine, that repeat.

- Workloads are random, non-zero data shaped like real models (`workloads`).
- Every save and load round runs in a **fresh process** and measures itself from inside (`child`).
- A lazy mmap is not a load until its bytes are read: a load op is "complete" when it ends with
  every byte in memory; lazy ops say so in their name (`ops`, derived from the format registry).
- The page cache is put in the same state before every load round, and proven (`pagecache`).
- Rounds are taken in interleaved passes (`schedule`), and every round also takes the **limit** it
  is judged against (`limits`): a raw read or write of a file of the same size, in the same cache
  state, in the round's own child right after the operation. The ratio of a round to its limit
  takes out the machine's speed as a whole (another disk, a slower session) and, the two being a
  second apart, much of its noise from one second to the next (`stats`, `result`;
  docs/benchmarks/repeatability.md).
- `report` and `plots` turn stored results into tables and figures; `gate` compares two runs.
"""

from ckpt_compat.bench.child import fresh, peak_rss_kib, remove, reset_peak_rss, run_op, same_process
from ckpt_compat.bench.limits import Limits, hash_throughput, limit_for, physical_limits
from ckpt_compat.bench.ops import LIMIT_OPS, OPS, RAW, SUBSET, Op, save_here, suffix, why_unavailable
from ckpt_compat.bench.pagecache import PAGE, evict, make_cold, make_warm, resident_fraction, size_on_disk
from ckpt_compat.bench.result import SCHEMA, result_info
from ckpt_compat.bench.schedule import Schedule, interleaved
from ckpt_compat.bench.stats import GB, Fit, Summary, throughput_ratio
from ckpt_compat.bench.workloads import (
    WORKLOADS,
    WorkloadModule,
    nbytes,
    scratch_dir,
    touch,
    workload,
    write_reference,
)

__all__ = [
    "GB",
    "LIMIT_OPS",
    "OPS",
    "PAGE",
    "RAW",
    "SCHEMA",
    "SUBSET",
    "WORKLOADS",
    "Fit",
    "Limits",
    "Op",
    "Schedule",
    "Summary",
    "WorkloadModule",
    "evict",
    "fresh",
    "hash_throughput",
    "interleaved",
    "limit_for",
    "make_cold",
    "make_warm",
    "nbytes",
    "peak_rss_kib",
    "physical_limits",
    "remove",
    "reset_peak_rss",
    "resident_fraction",
    "result_info",
    "run_op",
    "same_process",
    "save_here",
    "scratch_dir",
    "size_on_disk",
    "suffix",
    "throughput_ratio",
    "touch",
    "why_unavailable",
    "workload",
    "write_reference",
]
