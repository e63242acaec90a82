"""benchmarks/wait_times.py: the Gluon kernel with its consumer waits timed, and what its counters are read to say."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from hopper_compile import compiled_builtin, facts  # noqa: E402

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.wait_times import KINDS, SLOTS, NotPatchable, read_counters, timed_source  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402

PERSISTENT = KernelConfig.from_label("BM128 BN128 w4 s2 gluon persistent")
ADDRESS = 0x7F0000000000  # where the counters would be on the GPU: only written into the PTX here


def rendered(specs, name: str, cfg: KernelConfig = PERSISTENT) -> str:
    spec = load_spec(SpecFiles(str(specs / f"{name}.py")))
    return render_kernel(spec.name, lower_spec(spec), cfg)


@pytest.mark.parametrize("name", ["key_padding", "noop"])
def test_each_consumer_wait_is_timed_and_the_consumer_marks_its_start_and_end(specs, name):
    source = timed_source(rendered(specs, name), ADDRESS)
    # Q and the first K at a tile's start, K and V in the key loop, the last V, the output's staging tile
    assert source.count("_t0 = _clock(") == 6
    for slot, kind in enumerate(KINDS):
        assert source.count(f"_count_{slot}(_t0, ") == (2 if kind == "v" else 1)
    assert source.count("_busy_start(half)") == 1 and source.count("_busy_end(half)") == 1
    assert str(ADDRESS) in source


def test_only_the_kinds_asked_for_are_timed(specs):
    source = timed_source(rendered(specs, "key_padding"), ADDRESS, kinds=("k", ))
    assert source.count("_t0 = _clock(") == 1
    assert f"_count_{KINDS.index('k')}(_t0, j)" in source


def test_a_kernel_that_is_not_the_gluon_kernel_is_refused(specs):
    triton_kernel = rendered(specs, "noop", KernelConfig.from_label("BM128 BN64 w8 s3 tma"))
    with pytest.raises(NotPatchable, match="anchor not found"):
        timed_source(triton_kernel, ADDRESS)


def test_the_timed_kernel_compiles_for_hopper_with_no_spill_in_its_key_loops(specs):
    """The counters' reads and adds cost instructions in the key loop, but must not make ptxas spill there (a value
    kept live across the consumer's loop once did, a few hundred times), or the timed kernel is another kernel."""
    compiled = compiled_builtin(str(specs / "key_padding.py"), PERSISTENT, head_dim=128,
                                transform=lambda source: timed_source(source, ADDRESS))
    assert "%clock" in compiled.asm["ptx"] and "red.global.add.u64" in compiled.asm["ptx"]
    report = facts(compiled)
    assert report["matmul_loop_spill_instructions"] == 0
    assert report["fits_shared_memory"] and not report["wgmma_serialized"]


def test_the_counters_are_summed_over_the_sms_into_shares_of_the_consumers_cycles():
    counters = torch.zeros(3, 2, SLOTS, dtype=torch.int64)  # three SM ids, the middle one unused
    busy = len(KINDS)
    for sm, (k_cycles, k_waits, consumer_cycles) in zip((0, 2), [(300, 10, 10_000), (100, 10, 30_000)]):
        counters[sm, 0, KINDS.index("k")] = k_cycles
        counters[sm, 1, KINDS.index("k")] = k_waits
        counters[sm, 0, busy] = consumer_cycles
    report = read_counters(counters.flatten())
    assert report["consumer_cycles"] == 40_000
    k = report["kinds"]["k"]
    assert (k["cycles"], k["waits"]) == (400, 20)
    assert k["share"] == pytest.approx(0.01) and k["cycles_a_wait"] == pytest.approx(20.0)
    assert report["kinds"]["v"]["waits"] == 0 and report["kinds"]["v"]["cycles_a_wait"] is None
