"""The load index: LoadIndex picks the eligible worker with the lowest projected load."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agentdispatch.server.load_index import LoadIndex
from agentdispatch.server.load_state import LoadState


def test_picks_minimum_projected_load() -> None:
    index = LoadIndex(random.Random(1))
    index.update("a", 0.5, True)
    index.update("b", 0.2, True)
    index.update("c", 0.9, True)
    assert index.best() == "b"
    assert len(index) == 3
    assert "a" in index and "zz" not in index


def test_exclusion_falls_through_to_next_best_and_keeps_entries() -> None:
    index = LoadIndex(random.Random(1))
    for wid, load in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        index.update(wid, load, True)
    assert index.best(exclude={"a"}) == "b"
    assert index.best(exclude={"a", "b"}) == "c"
    assert index.best(exclude={"a", "b", "c"}) is None
    # exclusion is per call: nothing was lost
    assert index.best() == "a"


def test_accept_filter() -> None:
    index = LoadIndex(random.Random(1))
    index.update("a", 0.1, True)
    index.update("b", 0.2, True)
    assert index.best(accept=lambda w: w != "a") == "b"
    assert index.best() == "a"


def test_ineligible_worker_is_never_picked() -> None:
    index = LoadIndex(random.Random(1))
    index.update("idle-but-full", 0.0, False)
    index.update("busy", 0.8, True)
    assert index.best() == "busy"
    index.update("busy", 0.8, False)
    assert index.best() is None
    assert len(index) == 2  # kept, just not pickable
    index.update("idle-but-full", 0.0, True)
    assert index.best() == "idle-but-full"


def test_stale_entries_after_update_and_remove() -> None:
    index = LoadIndex(random.Random(1))
    index.update("a", 0.0, True)
    index.update("b", 0.5, True)
    index.update("a", 0.9, True)  # the old 0.0 entry for "a" is stale now
    assert index.best() == "b"
    index.remove("b")
    assert index.best() == "a"
    index.remove("a")
    assert index.best() is None
    assert len(index) == 0
    index.update("a", 0.3, True)  # re-added after removal
    assert index.best() == "a"


def test_many_updates_compact_without_losing_workers() -> None:
    index = LoadIndex(random.Random(7))
    for round_ in range(200):
        for i in range(5):
            index.update(f"w{i}", (round_ * 7 + i * 3) % 10 / 10, True)
    index.update("w3", 0.0, True)
    assert index.best() == "w3"
    assert len(index._heap) <= 4 * 5 + 64  # compacted, not growing with every update


def test_ties_are_broken_randomly() -> None:
    winners = set()
    for seed in range(50):
        index = LoadIndex(random.Random(seed))
        index.update("a", 0.3, True)
        index.update("b", 0.3, True)
        winners.add(index.best())
    assert winners == {"a", "b"}


def test_equal_projections_prefer_fewer_jobs_held() -> None:
    for seed in range(50):
        index = LoadIndex(random.Random(seed))
        index.update("busy", 0.3, True, held=6)
        index.update("empty", 0.3, True, held=0)
        assert index.best() == "empty"
        assert index.best(exclude={"empty"}) == "busy"
    index.update("busy", 0.2, True, held=6)  # a lower projection still wins over fewer jobs
    assert index.best() == "busy"


def test_projected_load() -> None:
    state = LoadState(reported=0.25, since_report={"j1", "j2"}, offers={"j3"}, answered_any=True)
    assert abs(state.projected(0.1) - 0.55) < 1e-9
    # a worker that has never answered an offer: each open offer weighs 0.5 more (two make it full)
    new = LoadState(offers={"j1"})
    assert abs(new.projected(0.1) - 0.6) < 1e-9
    new.offers.add("j2")
    assert new.projected(0.1) >= 1.0
    assert LoadState().projected(0.1) == 0.0


# -- property: the index agrees with a brute-force minimum ------------------------------------------------
WORKERS = [f"w{i}" for i in range(6)]
LOADS = st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.sampled_from(WORKERS), LOADS, st.booleans(), st.integers(0, 3)),
        st.tuples(st.just("remove"), st.sampled_from(WORKERS)),
        st.tuples(st.just("best"), st.frozensets(st.sampled_from(WORKERS), max_size=4)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(0, 2**16))
def test_best_matches_brute_force(ops: list[tuple[object, ...]], seed: int) -> None:
    index = LoadIndex(random.Random(seed))
    model: dict[str, tuple[float, bool, int]] = {}
    for op in ops:
        if op[0] == "update":
            _, wid, load, eligible, held = op
            index.update(wid, load, eligible, held)  # type: ignore[arg-type]
            model[wid] = (load, eligible, held)  # type: ignore[index,assignment]
        elif op[0] == "remove":
            index.remove(op[1])  # type: ignore[arg-type]
            model.pop(op[1], None)  # type: ignore[arg-type]
        else:
            exclude = op[1]
            candidates = {w: (load, held) for w, (load, ok, held) in model.items() if ok and w not in exclude}  # type: ignore[operator]
            picked = index.best(exclude)  # type: ignore[arg-type]
            if not candidates:
                assert picked is None
            else:
                assert picked in candidates
                assert candidates[picked] == min(candidates.values())
        assert len(index) == len(model)
