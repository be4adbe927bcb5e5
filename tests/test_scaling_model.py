"""The scaling model's anchored pipeline (bench/perf/scaling_model.py): the schedule arithmetic,
and the chunks and state it assumes against the real trainer (one process, small)."""

import pytest

from bench.perf import scaling_model as sm
from tests.support import make_trainer as make
from tests.support.configs import anchored_cfg


def test_a_pass_fills_and_drains_and_the_slowest_rank_sets_the_pace():
    # m chunks through P equal ranks: (m + P − 1) chunk times, rank 0 free after m
    end = sm._pass([0.0] * 3, [[1.0] * 4] * 3, [[0.0, 0.0]] * 4)
    assert end == [4.0, 5.0, 6.0]
    # a slow middle rank: the sum of the stages + (m − 1) × the slowest
    end = sm._pass([0.0] * 3, [[1.0] * 4, [3.0] * 4, [1.0] * 4], [[0.0, 0.0]] * 4)
    assert end[-1] == pytest.approx(5.0 + 3 * 3.0)
    # a handoff of h seconds on each boundary: each chunk's path gets 2h longer
    end = sm._pass([0.0] * 3, [[1.0] * 4] * 3, [[0.5, 0.5]] * 4)
    assert end[-1] > 6.0 + 2 * 0.5


def test_iteration_is_compute_plus_messages_and_rejected_ones_skip_the_multiplier_pass():
    shape = sm.AnchoredShape(depth=8, width=16, n_fit=4096, n_val=512, d_in=4, d_out=1)
    per = {k: [1e-5, 1e-7] for k in ("first", "hidden", "output")}
    c = sm.AnchoredCosts(fwd=per, gram=per, val=per, bwd=per, w={k: 1e-3 for k in per}, step=[0.0, 0.0])
    free = sm.Net("free", 0.0, float("inf"))
    one = sm.predict_anchored(shape, c, 1, free, free)
    assert one["comm"] == 0 and one["total"] == pytest.approx(sum(one["rank_compute"]))
    two = sm.predict_anchored(shape, c, 2, free, free)
    assert two["chunks"] == 8 and one["total"] / 2 < two["total"] < one["total"]
    slow = sm.Net("slow", 1e-3, 1e8)
    msg = sm.predict_anchored(shape, c, 2, slow, slow)
    assert msg["compute"] == pytest.approx(two["compute"]) and msg["comm"] > 8 * 2 * 1e-3
    rej = sm.predict_anchored(shape, c, 2, slow, slow, accepted=False)
    assert rej["total"] < msg["total"] / 1.5
    # rank 0 sends every column forward; the last rank the fit columns back and the control message
    assert msg["rank_bytes"] == [16 * 4 * (4096 + 512), 16 * 4 * 4096 + 40]
    assert rej["rank_bytes"] == [16 * 4 * (4096 + 512), 40]


@pytest.mark.parametrize("m", [1, 3])
def test_chunks_and_state_are_the_trainers(m):
    tr = make(anchored_cfg(depth=4, width=8, subset=200, microbatches=m))
    for it in range(2):
        tr.step(it)
    fit, val = sm.anchored_chunks(tr.N, tr.n_val, 1, m)
    assert fit == [s.stop - s.start for s in tr.fit_slices]
    assert val == [s.stop - s.start for s in tr.val_slices]
    shape = sm.AnchoredShape(depth=4, width=8, n_fit=tr.N, n_val=tr.n_val, d_in=tr.layers[0].dense[1] - 1,
                             d_out=tr.layers[-1].dense[0], itemsize=8)
    c = sm.AnchoredCosts(fwd={}, gram={}, val={}, bwd={}, w={}, step=[0.0, 0.0])
    state = sm.anchored_memory(shape, c, 1)[0][0]
    arrays = tr.state()
    scalars = sum(a.nbytes for k, a in arrays.items() if a.size == 1)
    assert sum(a.nbytes for a in arrays.values()) - scalars == state
