"""benchmarks/tile_times.py: the persistent kernel with a timer added, and what its slots are read to say."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from hopper_compile import compiled_builtin, facts  # noqa: E402

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.tile_times import NotPatchable, read_times, timed_source  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402

PERSISTENT = KernelConfig.from_label("BM128 BN128 w4 s2 gluon persistent")


def rendered(specs, name: str, cfg: KernelConfig = PERSISTENT) -> str:
    spec = load_spec(SpecFiles(str(specs / f"{name}.py")))
    return render_kernel(spec.name, lower_spec(spec), cfg)


def test_the_timer_goes_into_the_masked_consumer_and_the_schedule_makes_room_for_it(specs):
    source = timed_source(rendered(specs, "key_padding"))
    assert source.count("_global_timer(") == 3  # its definition, a program's start, a tile's end
    assert "gl.store(TIMES + i, _global_timer(j))" in source
    assert "torch.zeros(2 * programs + 1 + B * H * summary.shape[2]" in source
    assert "offsets = torch.empty(programs + 1" not in source


def test_a_kernel_without_the_masked_consumer_is_refused(specs):
    """Plain attention's kernel has no schedule to time against: every anchor must be there once."""
    with pytest.raises(NotPatchable, match="not once"):
        timed_source(rendered(specs, "noop"))


def test_the_timed_kernel_compiles_for_hopper_and_reads_the_global_timer(specs):
    compiled = compiled_builtin(str(specs / "key_padding.py"), PERSISTENT, head_dim=128, transform=timed_source)
    assert "%globaltimer_lo" in compiled.asm["ptx"]
    report = facts(compiled)
    assert report["fits_shared_memory"] and report["tensor_core_instructions"] > 0


def slots(offsets, ends, starts) -> torch.Tensor:
    """The OFFSETS tensor as a timed call leaves it: the schedule's offsets, each tile's end (by its place in the
    schedule), each program's start (the timer's low 32 bits, stored as int32)."""
    return torch.tensor([(x + 2**31) % 2**32 - 2**31 for x in offsets + ends + starts], dtype=torch.int32)


def test_the_tail_and_the_cost_of_a_tile_are_read_from_the_slots():
    """Two programs: the first runs tiles 2 and 0 (4 and 2 key blocks), the second tile 1 (1 block). Times in ns."""
    tiles = torch.tensor([2, 0, 1], dtype=torch.int32)
    room = slots([0, 2, 3], ends=[6_000, 9_000, 7_000], starts=[1_000, 1_200])
    times = read_times(room, tiles, programs=2, blocks=torch.tensor([2, 1, 4]))
    assert times.span_us == pytest.approx(8.0)  # the first start to the last end
    assert times.start_skew_us == pytest.approx(0.2)
    assert times.tail_us == pytest.approx(1.0)  # the second program waits 2 us, the first none
    assert times.program_busy_us == pytest.approx([8.0, 5.8])
    assert times.program_work == [8, 2]  # key blocks plus one a tile
    assert times.busiest_over_mean == pytest.approx(8.0 / 6.9)


@pytest.mark.parametrize("start", [2**32 - 5_000, 2**31 - 5_000])
def test_a_tile_time_is_fitted_to_its_key_blocks_across_the_timer_wrapping(start):
    """Tiles after a program's first, 1 us a block plus 2 us a tile; mid-call the timer's low 32 bits wrap, or
    cross what is int32's sign bit. The first program runs tiles 0, 1 and 2 of the schedule, the second tile 3."""
    tiles = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    ends = [start + 10_000, start + 13_000, start + 19_000, start + 20_000]  # then 1, then 4 blocks
    room = slots([0, 3, 4], ends=[e % 2**32 for e in ends], starts=[start, start])
    times = read_times(room, tiles, programs=2, blocks=torch.tensor([9, 1, 4, 5]))
    assert times.us_per_block == pytest.approx(1.0)
    assert times.us_per_tile == pytest.approx(2.0)
    assert times.model_per_tile_blocks == pytest.approx(2.0)
    assert times.span_us == pytest.approx(20.0)
